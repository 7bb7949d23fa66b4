"""export.py, evaluate.py, calibrate.py and train.py's TensorBoard extras, as a user runs them.

One over-confident model (128 training examples, trained long) serves every
test: `export` and `evaluate` work on any model, and calibration must lower
its ECE.
"""

import gzip
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import engine
from tests import early_runs
from tests import script_errors
from tests import warm_python

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Only train.py is given the model: the other scripts read it from model_dir.
# Not under test here, and each costs seconds of compiling: the head diagnostics, XLA.
_TRAIN_FLAGS = ["--batch_size=32", "--nohead_diagnostics", "--nojit_compile"]


def _run(script, *flags, timeout=240):
  return warm_python.run([sys.executable, os.path.join(_ROOT, "scripts", script), *flags],
                         capture_output=True, text=True, timeout=timeout, cwd=_ROOT, check=False)


def _events(directory):
  accumulator = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
  accumulator.Reload()
  return accumulator


_OVER_CONFIDENT = early_runs.register("over_confident_run", lambda model_dir: [
    os.path.join(_ROOT, "scripts", "train.py"), *_TRAIN_FLAGS,
    f"--model_dir={model_dir}", "--experiment_params=hidden_units=64,num_train_examples=128",
    "--train_steps=600",
    "--steps_per_loop=100", "--eval_every=200", "--checkpoint_every=200",
    "--learning_rate=0.01", "--best_metric=digit/accuracy", "--profile_steps=200,210"])


@pytest.fixture(scope="module")
def over_confident_run():
  model_dir, result = _OVER_CONFIDENT.result()
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, result


def test_train_keeps_an_export_of_the_best_evaluation(over_confident_run):
  model_dir, result = over_confident_run
  evaluations = {event.step: float(tf.make_ndarray(event.tensor_proto)) for event in
                 _events(os.path.join(model_dir, "eval")).Tensors("digit/accuracy")}
  best_step = max(sorted(evaluations), key=lambda step: evaluations[step])  # First of ties.
  best_root = os.path.join(model_dir, "export", "best")
  assert os.listdir(best_root) == [str(best_step)]
  record = json.loads(open(os.path.join(best_root, str(best_step), "best_metric.json")).read())
  assert record == {"metric": "digit/accuracy", "value": pytest.approx(evaluations[best_step]),
                    "step": best_step, "goal": "max"}
  assert "New best digit/accuracy" in result.stderr
  tf.saved_model.load(os.path.join(best_root, str(best_step)))


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


class _TensorBoard:
  """`tensorboard --logdir <dir>` on 127.0.0.1, as the README starts it; JSON over HTTP."""

  def __init__(self, logdir):
    self.url = f"http://127.0.0.1:{_free_port()}"
    command = [os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir", logdir,
               "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1], "--load_fast=false"]
    self._process = warm_python.Popen(command, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)

  def get(self, route, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(self.url + route, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
      content = response.read()
      if response.headers.get("Content-Encoding") == "gzip":
        content = gzip.decompress(content)
      return json.loads(content)

  def wait_for_runs(self, expected, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
      try:
        runs = self.get("/data/runs")
        if set(expected) <= set(runs):
          return runs
      except OSError:
        pass
      if time.monotonic() > deadline or self._process.poll() is not None:
        raise AssertionError(f"TensorBoard did not list the runs {expected} in {timeout} s.")
      time.sleep(0.5)

  def close(self):
    self._process.kill()
    self._process.wait()


def test_tensorboard_shows_the_profile_and_fills_every_hparams_metric(over_confident_run):
  model_dir, _ = over_confident_run
  traces = tf.io.gfile.glob(os.path.join(model_dir, "train", "plugins", "profile", "*",
                                         "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  board = _TensorBoard(model_dir)  # The README's command: the model_dir itself.
  try:
    assert sorted(board.wait_for_runs(["train", "eval"])) == ["eval", "train"]  # No "." run.
    assert board.get("/data/plugins_listing")["profile"]["enabled"]
    profile_runs = board.get("/data/plugin/profile/runs")
    assert [run.split("/")[0] for run in profile_runs] == ["train"], profile_runs
    experiment = board.get("/data/plugin/hparams/experiment", {"experimentName": ""})
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"Overview/loss", "digit/accuracy", "digit/adaptive_ece", "box/mae"} <= metrics
    hparams = {info["name"] for info in experiment["hparamInfos"]}
    assert {"learning_rate", "experiment_params/heads", "best_metric"} <= hparams
    groups = board.get("/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                            "STATUS_RUNNING"],
        "colParams": [{"metric": info["name"]} for info in experiment["metricInfos"]]})
    group, = groups["sessionGroups"]
    values = {value["name"]["tag"]: value.get("value") for value in group["metricValues"]}
    assert set(values) == metrics and all(v is not None for v in values.values()), values
    assert group["hparams"]["learning_rate"] == pytest.approx(0.01)
    assert group["hparams"]["best_metric"] == "digit/accuracy"
    final = _events(os.path.join(model_dir, "eval")).Tensors("digit/accuracy")[-1]
    assert values["digit/accuracy"] == pytest.approx(float(tf.make_ndarray(final.tensor_proto)))
    images = board.get("/data/plugin/images/tags")["eval"]
    assert {"digit/confusion_matrix", "digit/reliability_diagram"} <= set(images)
  finally:
    board.close()


def test_export_script_writes_a_loadable_model_from_the_checkpoint(over_confident_run,
                                                                   tmp_path):
  model_dir, _ = over_confident_run
  result = _run("export.py", f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'served'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("served")
  features, labels = engine.data.synthetic_arrays("eval", 4096)
  outputs = tf.saved_model.load(str(tmp_path / "served")).signatures["serving_default"](
      features=tf.constant(features))
  accuracy = np.mean(outputs["digit/classes"].numpy() == labels["digit"])
  final = _events(os.path.join(model_dir, "eval")).Tensors("digit/accuracy")[-1]
  assert final.step == 600
  assert accuracy == pytest.approx(float(tf.make_ndarray(final.tensor_proto)), abs=1e-6)


def test_evaluate_script_writes_the_metrics_as_json_and_to_tensorboard(over_confident_run,
                                                                       tmp_path):
  model_dir, _ = over_confident_run
  output = tmp_path / "metrics.json"
  result = _run("evaluate.py", f"--model_dir={model_dir}", f"--output_json={output}",
                f"--checkpoint={model_dir}/ckpt-400")
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads(output.read_text())
  assert written["step"] == 400 and written["checkpoint"].endswith("ckpt-400")
  in_training = {event.step: float(tf.make_ndarray(event.tensor_proto)) for event in
                 _events(os.path.join(model_dir, "eval")).Tensors("digit/accuracy")}
  assert written["metrics"]["digit/accuracy"] == pytest.approx(in_training[400], abs=1e-6)
  assert "digit   accuracy" in result.stdout


def test_evaluate_follows_a_training_run_until_it_ends(tmp_path):
  model_dir = str(tmp_path / "model")
  training = warm_python.Popen(
      [sys.executable, os.path.join(_ROOT, "scripts", "train.py"), *_TRAIN_FLAGS,
       f"--model_dir={model_dir}", "--experiment_params=hidden_units=64", "--train_steps=600",
       "--checkpoint_every=200",
       "--steps_per_loop=100", "--eval_every=0"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=_ROOT)
  try:
    result = _run("evaluate.py", f"--model_dir={model_dir}", "--follow", "--timeout=120",
                  timeout=300)
  finally:
    training.wait(timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  steps = [int(step) for step in re.findall(r"^step (\d+) \(", result.stdout, re.MULTILINE)]
  assert steps[-1] == 600 and steps == sorted(set(steps))
  assert json.loads((tmp_path / "model" / "eval" / "metrics.json").read_text())["step"] == 600


def test_calibrate_script_fits_vector_scaling_and_the_export_serves_it(over_confident_run,
                                                                       tmp_path):
  model_dir, _ = over_confident_run
  before = _tensors(model_dir)
  result = _run("calibrate.py", f"--model_dir={model_dir}", "--method=vector")
  assert result.returncode == 0, result.stderr[-3000:]
  table = {tuple(line.split()[:2]): line.split()[2:] for line in result.stdout.splitlines()
           if line.split()[:1] in (["digit"], ["parity"])}
  for head in ("digit", "parity"):
    assert table[head, "fitted"][0] == "scale"
    metrics = {metric for (name, metric) in table if name == head} - {"fitted"}
    assert metrics == {"ece", "adaptive_ece", "classwise_ece", "mce", "brier", "nll", "accuracy"}
  ece_before, ece_after = (float(v) for v in table["digit", "ece"])
  nll_before, nll_after = (float(v) for v in table["digit", "nll"])
  assert ece_after < 0.6 * ece_before and nll_after < nll_before
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-600")
  after = _tensors(model_dir)  # Every other variable, and the input position, kept.
  changed = sorted(key for key in before if not np.array_equal(before[key], after[key]))
  assert changed == [f"model/heads/{head}/calibration_{kind}/.ATTRIBUTES/VARIABLE_VALUE"
                     for head in ("digit", "parity") for kind in ("bias", "scale")] + [
                         "save_counter/.ATTRIBUTES/VARIABLE_VALUE"]
  reader = tf.train.load_checkpoint(model_dir)
  assert "train_iterator/.ATTRIBUTES/ITERATOR_STATE" in reader.get_variable_to_shape_map()
  exported = result.stdout.splitlines()[-1]
  assert os.path.isdir(exported) and int(os.path.basename(exported)) >= 600
  # The export serves what trainer.predict gives after calibration: saved_model_cli's outputs.
  features, _ = engine.data.synthetic_arrays("eval", 64)
  np.save(tmp_path / "features.npy", features)
  for head in ("digit", "parity", "box"):
    os.makedirs(tmp_path / "out" / head)
  served = warm_python.run(
      [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "run", "--dir",
       exported, "--tag_set", "serve", "--signature_def", "serving_default", "--inputs",
       f"features={tmp_path / 'features.npy'}", "--outdir", str(tmp_path / "out")],
      capture_output=True, text=True, timeout=240, check=False)
  assert served.returncode == 0, served.stderr[-3000:]
  trainer, experiment = engine.experiment.build(engine.Config(**engine.run_config.read(
      model_dir)))
  trainer.build(engine.experiment.features_spec(experiment, 32))
  predicted = trainer.predict(features)
  assert float(np.std(trainer.heads[0].calibration_scale.numpy())) > 0  # Not the identity.
  for head, output in (("digit", "probabilities"), ("digit", "classes"),
                       ("parity", "probabilities"), ("box", "values")):
    np.testing.assert_allclose(np.load(tmp_path / "out" / head / f"{output}.npy"),
                               predicted[head][output], rtol=1e-5, atol=1e-6)


def _tensors(model_dir):
  reader = tf.train.load_checkpoint(model_dir)
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
          if not key.endswith("ITERATOR_STATE") and key != "_CHECKPOINTABLE_OBJECT_GRAPH"}


_SCRIPT_ERRORS = {
    "export.py": ([], r"No checkpoint in --model_dir="),
    "evaluate.py": (["--follow", "--checkpoint=x"], r"--follow .* cannot take --checkpoint"),
    "calibrate.py": ([], r"No checkpoint in --model_dir="),
    "calibrate.py --method": (["--method=nonsense"],
                              r"--method=nonsense: value should be one of "
                              r"<temperature\|vector\|platt>"),
}


@pytest.fixture(scope="module")
def script_error_messages(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("errors"))
  return dict(zip(_SCRIPT_ERRORS, script_errors.in_one_process(
      [[script.split()[0], f"--model_dir={model_dir}", *flags]
       for script, (flags, _) in _SCRIPT_ERRORS.items()])))


@pytest.mark.parametrize("script", list(_SCRIPT_ERRORS))
def test_script_errors_name_the_flag(script_error_messages, script):
  message = script_error_messages[script]
  assert re.search(_SCRIPT_ERRORS[script][1], message or ""), message
