"""Deterministic runs and exact resume after SIGKILL, with real subprocesses."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
from tests import early_runs
from tests import warm_python

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, "scripts", "train.py")
_STEPS = 400
_FLAGS = ["--deterministic", "--steps_per_loop=50", "--checkpoint_every=100", "--eval_every=0",
          "--experiment_params=num_train_examples=4096,hidden_units=64", "--nohead_diagnostics"]
_PROGRESS = re.compile(r"train \| step (\d+)/")


def _command(model_dir):
  return [sys.executable, _SCRIPT, f"--model_dir={model_dir}", f"--train_steps={_STEPS}", *_FLAGS]


def _train(model_dir):
  result = warm_python.run(_command(model_dir), capture_output=True, text=True, timeout=300,
                           cwd=_ROOT, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _final_state(model_dir):
  """Every checkpointed tensor of the last step, but the iterator's and the save counter."""
  path = tf.train.latest_checkpoint(model_dir)
  assert path.endswith(f"ckpt-{_STEPS}")
  reader = tf.train.load_checkpoint(path)
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
          if "iterator" not in key and key not in ("_CHECKPOINTABLE_OBJECT_GRAPH",
                                                   "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


def _assert_bitwise_equal(a, b):
  assert sorted(a) == sorted(b)
  different = [key for key in a if not np.array_equal(a[key], b[key])]
  assert not different, different


_UNINTERRUPTED = early_runs.register("uninterrupted", lambda model_dir: _command(model_dir)[1:])


@pytest.fixture(scope="module")
def uninterrupted():
  model_dir, result = _UNINTERRUPTED.result()
  assert result.returncode == 0, result.stderr[-3000:]
  return _final_state(model_dir)


def test_a_run_killed_at_a_random_point_resumes_to_the_weights_of_another_run_bitwise(
    uninterrupted, tmp_path):
  """Two --deterministic runs in different processes, one killed and rerun, end equal.

  When the kill comes before the first checkpoint, this is two whole runs.
  """
  seed = random.randrange(1 << 30)
  rng = random.Random(seed)
  kill_after_line, delay = rng.randrange(1, _STEPS // 50 - 1), rng.uniform(0.0, 0.2)
  process = warm_python.Popen(_command(tmp_path), stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True, cwd=_ROOT)
  lines = 0
  try:
    for line in process.stderr:
      if _PROGRESS.search(line):
        lines += 1
        if lines == kill_after_line:
          break
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)  # No handler, no cleanup: like an OOM kill.
    process.wait(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
  where = f"killed after progress line {kill_after_line} + {delay:.2f} s (seed {seed})"
  assert process.returncode == -signal.SIGKILL, where
  resumed = _train(str(tmp_path))
  saved = [int(m) for m in re.findall(r"Restored .*ckpt-(\d+) at step", resumed.stderr)]
  assert saved == [] or saved[0] % 100 == 0, where
  _assert_bitwise_equal(_final_state(str(tmp_path)), uninterrupted)


@pytest.mark.parametrize("checkpoint_iterator", [True, False])
def test_the_input_position_is_checkpointed_and_restored(make_trainer, tmp_path,
                                                         checkpoint_iterator):
  x, labels = engine.data.synthetic_arrays("train", 64)

  def dataset():  # A new one per run: iterators of one shuffled dataset get new orders.
    return tf.data.Dataset.from_tensor_slices((x, labels)).shuffle(64, seed=3).repeat().batch(8)

  initial = None

  def trainer(name):
    nonlocal initial
    made = make_trainer(model_dir=tmp_path / name, checkpoint_every=5, jit_compile=False,
                        head_diagnostics=False, checkpoint_iterator=checkpoint_iterator)
    made.build(tf.TensorSpec([None, x.shape[1]], tf.float32))
    if initial is None:
      initial = [v.numpy() for v in made.model.variables]
    elif made.step == 0:  # Not restored: the same start for every run.
      for variable, value in zip(made.model.variables, initial):
        variable.assign(value)
    return made
  trainer("resumed").train(dataset(), steps=5)
  resumed = trainer("resumed")
  resumed.train(dataset(), steps=10)  # Restores step 5, then trains 5 more.
  straight = trainer("straight")
  straight.train(dataset(), steps=10)
  same = all(np.array_equal(a.numpy(), b.numpy())
             for a, b in zip(resumed.model.variables, straight.model.variables))
  assert same == checkpoint_iterator  # Without the position, batches 0-4 come again.


def test_resuming_with_another_pipeline_says_so(make_trainer, tmp_path):
  x, labels = engine.data.synthetic_arrays("train", 64)
  shuffled = tf.data.Dataset.from_tensor_slices((x, labels)).shuffle(64, seed=3).repeat().batch(8)
  make_trainer(model_dir=tmp_path, checkpoint_every=5).train(shuffled, steps=5)
  plain = tf.data.Dataset.from_tensor_slices((x, labels)).repeat().batch(8)
  with pytest.raises(ValueError, match=r"Cannot resume the input pipeline from .*ckpt-5: the "
                                       r"training dataset differs"):
    make_trainer(model_dir=tmp_path, checkpoint_every=5).train(plain, steps=10)


def test_dropout_random_state_is_checkpointed(make_trainer, tmp_path):
  def dropout_trunk():
    return keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.5)])
  x, labels = engine.data.synthetic_arrays("train", 64)
  dataset = tf.data.Dataset.from_tensor_slices((x, labels)).repeat().batch(8)
  trainer = make_trainer(model_dir=tmp_path, trunk=dropout_trunk(), checkpoint_every=5,
                         jit_compile=False, head_diagnostics=False)

  def seed_state(model):
    states = [v for v in model.model.non_trainable_variables if "seed_generator" in v.path]
    assert len(states) == 1
    return states[0].numpy()
  trainer.build(tf.TensorSpec([None, x.shape[1]], tf.float32))
  initial = seed_state(trainer)
  trainer.train(dataset, steps=5)
  assert not np.array_equal(seed_state(trainer), initial)  # Each step draws new masks.
  resumed = make_trainer(model_dir=tmp_path, trunk=dropout_trunk(), checkpoint_every=5,
                         jit_compile=False, head_diagnostics=False)
  resumed.build(tf.TensorSpec([None, x.shape[1]], tf.float32))
  np.testing.assert_array_equal(seed_state(resumed), seed_state(trainer))
