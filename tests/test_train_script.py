"""scripts/train.py end to end, as a user runs it: a real subprocess."""

import os
import re
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

import engine
from tests import events
from tests import script_errors
from tests import warm_python

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, "scripts", "train.py")
_PROGRESS = re.compile(
    r"train \| step (\d+)/(\d+) \| loss [\d.]+ \| digit [\d.]+ parity [\d.]+ box [\d.]+ \| "
    r"[\d.]+ steps/s \| eta (\d+:\d\d:\d\d|-:--:--)")


def _run(*flags, timeout=240):
  return warm_python.run([sys.executable, _SCRIPT, *flags], capture_output=True, text=True,
                         timeout=timeout, cwd=_ROOT, check=False)


def _write_examples(path, split, count):
  x, labels = engine.data.synthetic_arrays(split, count)
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(count):
      feature = {
          "features": tf.train.Feature(float_list=tf.train.FloatList(value=x[i])),
          "digit": tf.train.Feature(int64_list=tf.train.Int64List(value=[labels["digit"][i]])),
          "parity": tf.train.Feature(int64_list=tf.train.Int64List(value=[labels["parity"][i]])),
          "box": tf.train.Feature(float_list=tf.train.FloatList(value=labels["box"][i])),
      }
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_training_from_tfrecord_files_configured_by_a_flagfile(tmp_path):
  _write_examples(str(tmp_path / "train.tfrecord"), "train", 512)
  _write_examples(str(tmp_path / "eval.tfrecord"), "eval", 256)
  model_dir = str(tmp_path / "model")
  flagfile = tmp_path / "run.flags"
  flagfile.write_text("\n".join([
      f"--model_dir={model_dir}", "--experiment=tfrecord",
      f"--experiment_params=train_data={tmp_path}/train*,eval_data={tmp_path}/eval*",
      "--train_steps=300", "--batch_size=64", "--checkpoint_every=150",
      "--nohead_diagnostics", "--nojit_compile"]))
  result = _run(f"--flagfile={flagfile}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert [os.path.basename(p) for p in tf.train.get_checkpoint_state(model_dir)
          .all_model_checkpoint_paths] == ["ckpt-150", "ckpt-300"]
  metrics = events.final_scalars(model_dir)
  assert metrics["digit/accuracy"] > 0.4 and metrics["parity/accuracy"] > 0.6


_BAD_FLAGS = {
    "--steps_per_loop=0": r"steps_per_loop must be an integer >= 1; received 0",
    "--batch_size=-4": r"batch_size must be an integer >= 1; received -4",
    "--learning_rate=nan": r"learning_rate must be a finite number >= 0.0; received nan",
    "--lr_schedule=piecewise": r"lr_schedule=piecewise needs lr_boundaries",
    "--experiment=nope": r"experiment='nope' is neither a registered experiment",
    "--experiment=no_such_module:fn": r"cannot import 'no_such_module'",
    "--experiment_params=depth=3": r"experiment 'synthetic' has no parameter depth; its "
                                   r"parameters are heads, hidden_units",
    "--experiment_params=hidden_units=(128,'wide')": r"experiment_params hidden_units: "
                                                     r"expected positive integers",
    "--experiment_params=heads=digit:softmax": r"experiment_params heads: each head is "
                                               r"'name:kind:size\[:weight\]'",
    "--experiment_params=weighting=gradnorm": r"head 'parity' has a fixed weight or schedule, "
                                              r"but weighting=gradnorm learns the weights",
    "--experiment_params=weight_schedules={'size':'linear:0:1:10'}":
        r"weight_schedules names no head of experiment_params heads",
    "--experiment_params=weight_schedules=box:linear": r"weight_schedules: expected a dict",
    "--experiment_params=heads": r"experiment_params: each item is key=value",
    "--strategy=mirrored": r"--strategy=mirrored needs GPUs, or --num_cpu_devices=N",
    "--precision=float8": r"flag --precision=float8: value should be one of",
    "--strategy=tpu": r"--strategy=tpu: this machine has no TPU attached",
}


@pytest.fixture(scope="module")
def bad_flag_errors(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("bad_flags"))
  return dict(zip(_BAD_FLAGS, script_errors.in_one_process(
      [["train.py", f"--model_dir={model_dir}", flag] for flag in _BAD_FLAGS])))


@pytest.mark.parametrize("flag", list(_BAD_FLAGS))
def test_bad_flags_are_named_in_the_error(bad_flag_errors, flag):
  assert re.search(_BAD_FLAGS[flag], bad_flag_errors[flag] or ""), bad_flag_errors[flag]


def test_sigterm_saves_the_current_step_and_exits_42_then_the_rerun_resumes(tmp_path):
  model_dir = str(tmp_path / "model")
  flags = [f"--model_dir={model_dir}", "--steps_per_loop=50", "--checkpoint_every=100000",
           "--eval_every=0", "--nohead_diagnostics", "--nojit_compile"]
  process = warm_python.Popen([sys.executable, _SCRIPT, *flags, "--train_steps=1000000"],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                              cwd=_ROOT)
  try:
    for line in process.stderr:  # Wait until it is training.
      if _PROGRESS.search(line):
        break
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 42, stderr[-3000:]
  saved = re.search(r"SIGTERM: saved a checkpoint at step (\d+); exiting with code 42", stderr)
  assert saved, stderr[-3000:]
  step = int(saved.group(1))
  assert step >= 50 and step % 50 == 0  # Whole loops: nothing trained was lost.
  assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{step}")
  result = _run(*flags, f"--train_steps={step + 50}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(rf"Restored .*ckpt-{step} at step {step}", result.stderr)
  assert [int(m.group(1)) for m in _PROGRESS.finditer(result.stderr)] == [step + 50]
