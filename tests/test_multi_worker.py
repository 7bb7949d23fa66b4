"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 match one process."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from tests import multi_worker_job
from tests import warm_python

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(tmp_path, model_dir, *args):
  """Two worker processes of one cluster on 127.0.0.1, sharing `model_dir`."""
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
  workers = []
  for index in range(2):
    env = dict(os.environ, PYTHONPATH=_ROOT,
               TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
    workers.append(warm_python.Popen(
        [sys.executable, os.path.join(_ROOT, "tests", "multi_worker_job.py"),
         str(tmp_path / f"worker{index}.npz"), str(model_dir), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  return workers


def _finish(workers, timeout=180):
  outputs = []
  try:
    for worker in workers:
      outputs.append(worker.communicate(timeout=timeout)[0])
  finally:
    for worker in workers:  # A worker whose peer died would wait forever.
      if worker.poll() is None:
        worker.kill()
  return outputs


def test_a_sigterm_to_one_worker_saves_both_at_one_step_and_the_job_resumes_like_one_process(
    tmp_path):
  """Preemption, then exactness: the resumed two-worker run equals one process.

  One job is worth both checks: starting a cluster of two workers costs most
  of this test's time.
  """
  model_dir = tmp_path / "model"
  workers = _start_workers(tmp_path, model_dir, "1000000")
  try:
    deadline = time.monotonic() + 120
    while tf.train.latest_checkpoint(str(model_dir)) is None:  # Training is under way.
      assert time.monotonic() < deadline and all(w.poll() is None for w in workers)
      time.sleep(0.2)
    workers[1].send_signal(signal.SIGTERM)  # A notice to one worker, as a scheduler sends.
  finally:
    outputs = _finish(workers, timeout=120)
  assert [worker.returncode for worker in workers] == [42, 42], outputs[0][-2000:]
  saved = int(tf.train.latest_checkpoint(str(model_dir)).rsplit("-", 1)[1])
  assert saved >= 10 and saved % multi_worker_job.STEPS == 0
  shutil.copytree(model_dir, tmp_path / "single")  # For the one-process reference.
  workers = _start_workers(tmp_path, model_dir, str(saved + multi_worker_job.STEPS))
  outputs = _finish(workers)
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-3000:]
    assert f"started at step {saved}" in output
  assert os.listdir(model_dir / ".worker-1")  # Worker 1 saved aside, not over the chief.
  # The resumed steps, from the restored weights, equal one process's.
  results = [np.load(tmp_path / f"worker{index}.npz") for index in range(2)]
  assert int(results[0]["replicas"]) == 2
  # Each global batch is split between the workers, not read twice.
  assert [float(r["examples_per_step"]) for r in results] == [multi_worker_job.GLOBAL_BATCH] * 2
  count = (len(results[0].files) - 3) // 2
  reference = multi_worker_job.make_trainer(str(tmp_path / "single"))
  reference.build(tf.TensorSpec([None, 32], "float32"))
  assert reference.step == saved
  for i, variable in enumerate(reference.model.trainable_variables):
    np.testing.assert_array_equal(variable.numpy(), results[0][f"arr_{i}"])
  # With several replicas the input position is not checkpointed: the
  # resumed job reads its data from the start, as this process does.
  expected = reference.train(multi_worker_job.dataset(), steps=saved + multi_worker_job.STEPS)
  for result in results:
    np.testing.assert_allclose(float(result["loss"]), expected["loss"], rtol=1e-5)
    for i, variable in enumerate(reference.model.trainable_variables):
      np.testing.assert_allclose(result[f"arr_{count + i}"], variable.numpy(), rtol=1e-5,
                                 atol=1e-6, err_msg=variable.path)
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(
      f"ckpt-{saved + multi_worker_job.STEPS}")
