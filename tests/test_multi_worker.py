"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 match one process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests import multi_worker_job

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_two_workers_train_like_one_process(tmp_path):
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
  workers = []
  for index in range(2):
    env = dict(os.environ, PYTHONPATH=_ROOT,
               TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
    workers.append(subprocess.Popen(
        [sys.executable, os.path.join(_ROOT, "tests", "multi_worker_job.py"),
         str(tmp_path / f"worker{index}.npz"), str(tmp_path / f"model{index}")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = []
  try:
    for worker in workers:
      outputs.append(worker.communicate(timeout=180)[0])
  finally:
    for worker in workers:  # A worker whose peer died would wait forever; SIGTERM is ignored.
      if worker.poll() is None:
        worker.kill()
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-3000:]
  results = [np.load(tmp_path / f"worker{index}.npz") for index in range(2)]
  assert int(results[0]["replicas"]) == 2
  # Each global batch is split between the workers, not read twice.
  assert [float(r["examples_per_step"]) for r in results] == [multi_worker_job.GLOBAL_BATCH] * 2
  count = (len(results[0].files) - 3) // 2
  initial = [results[0][f"arr_{i}"] for i in range(count)]
  reference = multi_worker_job.make_trainer(str(tmp_path / "single"))
  reference.build(multi_worker_job.tf.TensorSpec([None, 32], "float32"))
  for variable, value in zip(reference.model.trainable_variables, initial):
    variable.assign(value)
  expected = reference.train(multi_worker_job.dataset(), steps=multi_worker_job.STEPS)
  for result in results:
    np.testing.assert_allclose(float(result["loss"]), expected["loss"], rtol=1e-5)
    for i, variable in enumerate(reference.model.trainable_variables):
      np.testing.assert_allclose(result[f"arr_{count + i}"], variable.numpy(), rtol=1e-5,
                                 atol=1e-6, err_msg=variable.path)
