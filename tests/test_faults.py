"""The fault table: each row a fault or bad input, and the outcome it must give.

A row's function provokes the fault and returns what happened as text: the
error (`ErrorType: message`), the warnings logged, and any facts it checks
(`step=10`); the row's pattern must be found in that text. The rows cover
every case of issue 15 (checkpoints, writers, signals, leftovers, silent
numbers) and every row of BUILD.md's bad-input tables, each at its cheapest
(tiny models, no XLA). Script-level faults (two train.py processes, a
truncated checkpoint then evaluate.py) are at the end.
"""

import json
import logging as std_logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
from engine.experiments import tfrecord as tfrecord_experiment
import heads
from engine import writer
from tests.conftest import dataset_of
from tests.conftest import small_trunk

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = tf.TensorSpec([None, 32], tf.float32)
ROWS = {}


def row(expected):
  """Registers a fault: the function's name says the fault, `expected` the outcome (a regex)."""
  def register(function):
    ROWS[function.__name__] = (function, expected)
    return function
  return register


class _Logs(std_logging.Handler):
  def __init__(self):
    super().__init__(std_logging.WARNING)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def outcome(function, *args) -> str:
  """What `function(*args)` gave: its facts, the warnings it logged and its error."""
  logs, logger = _Logs(), std_logging.getLogger("absl")
  logger.addHandler(logs)
  try:
    facts = function(*args) or ""
    error = ""
  except (Exception, SystemExit) as caught:  # pylint: disable=broad-except
    facts, error = "", f"{type(caught).__name__}: {caught} (code {getattr(caught, 'code', '')})"
  finally:
    logger.removeHandler(logs)
  return " | ".join([str(facts), *logs.lines, error])


def _batches(count=64, mutate=None, weights=None, split="train", **kwargs):
  x, labels = engine.data.synthetic_arrays(split, count)
  if mutate:
    mutate(x, labels)
  return dataset_of(x, labels, weights, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A demo-head run with checkpoints at steps 5 and 10 (copied by each row that uses it)."""
  model_dir = str(tmp_path_factory.mktemp("trained"))
  trainer = engine.Trainer(
      trunk=small_trunk(), heads=heads.parse_heads(engine.data.DEMO_HEADS),
      optimizer=keras.optimizers.Adam(1e-3),
      config=engine.Config(model_dir=model_dir, steps_per_loop=5, checkpoint_every=5, seed=0,
                           jit_compile=False, head_diagnostics=False))
  trainer.train(engine.data.synthetic("train", 16, num_examples=256), steps=10)
  return model_dir


class Context:
  """What rows share: a trainer factory, a fresh directory, a copy of the trained run."""

  def __init__(self, make_trainer, tmp_path, trained_dir, request):
    self.make_trainer, self.tmp_path, self._trained = make_trainer, tmp_path, trained_dir
    self._request = request

  def fixture(self, name):
    """A module fixture, made only for the rows that need it."""
    return self._request.getfixturevalue(name)

  def run_copy(self) -> str:
    target = str(self.tmp_path / "run")
    shutil.copytree(self._trained, target)
    return target

  def resumed(self, model_dir, **config):
    return self.make_trainer(model_dir=model_dir, checkpoint_every=5, **config)


# --- settings and heads -------------------------------------------------------

@row(r"learning_rate must be a finite number >= 0.0; received nan")
def learning_rate_nan(ctx):
  engine.Config(model_dir="x", learning_rate=float("nan"))


@row(r"learning_rate must be a finite number >= 0.0; received -0.1")
def learning_rate_negative(ctx):
  engine.Config(model_dir="x", learning_rate=-0.1)


@row(r"steps_per_loop must be an integer >= 1; received 0")
def steps_per_loop_zero(ctx):
  engine.Config(model_dir="x", steps_per_loop=0)


@row(r"max_consecutive_skips must be an integer >= 0; received -1")
def max_consecutive_skips_negative(ctx):
  engine.Config(model_dir="x", max_consecutive_skips=-1)


@row(r"flag --precision=float8: value should be one of")
def unknown_flag_value(ctx):
  from absl import flags  # pylint: disable=import-outside-toplevel
  holder = flags.FlagValues()
  engine.config_flags.define_flags(holder)
  holder(["train", "--model_dir=x", "--precision=float8"])


@row(r"experiment='nope' is neither a registered experiment")
def unknown_experiment(ctx):
  engine.experiment.build(engine.Config(model_dir=str(ctx.tmp_path), experiment="nope"))


@row(r"experiment 'synthetic' has no parameter depth; its parameters are")
def unknown_experiment_parameter(ctx):
  engine.experiment.build(engine.Config(model_dir=str(ctx.tmp_path),
                                        experiment_params="depth=3"))


@row(r"experiment_params heads: each head is 'name:kind:size\[:weight\]'")
def bad_heads_text(ctx):
  engine.experiment.build(engine.Config(model_dir=str(ctx.tmp_path),
                                        experiment_params="heads=digit:softmax"))


@row(r"head 'parity' has a fixed weight or schedule, but weighting=gradnorm")
def fixed_weight_with_learned_weighting(ctx):
  engine.experiment.build(engine.Config(
      model_dir=str(ctx.tmp_path),
      experiment_params="heads=digit:softmax:10,parity:softmax:2:0.5,weighting='gradnorm'"))


@row(r"holds a run of another model .*experiment_params hidden_units: '\(unset\)' -> 64")
def model_setting_changed_on_a_kept_run(ctx):
  engine.run_config.record(engine.Config(model_dir=str(ctx.tmp_path)))
  engine.run_config.record(engine.Config(model_dir=str(ctx.tmp_path),
                                         experiment_params="hidden_units=64"))


@row(r"Head 'one': num_classes must be an integer >= 2; received 1\. .*SigmoidHead\('one', 1\)")
def softmax_head_of_one_class(ctx):
  heads.SoftmaxHead("one", num_classes=1)


@row(r"best_metric='digit/acc' is not an evaluation result of these heads")
def unknown_best_metric(ctx):
  ctx.make_trainer(best_metric="digit/acc")


@row(r"model_dir '.*' is not a writable directory")
def model_dir_not_writable(ctx):
  (ctx.tmp_path / "file").write_text("in the way")
  ctx.make_trainer(model_dir=ctx.tmp_path / "file" / "run")


# --- batches: structure (before anything is built) ----------------------------

@row(r"Dataset elements must be \(features, labels\) or \(features, labels, sample_weights\)")
def element_not_a_tuple(ctx):
  x, _ = engine.data.synthetic_arrays("train", 16)
  ctx.make_trainer().train(tf.data.Dataset.from_tensor_slices(x).batch(8), steps=2)


@row(r"Head 'parity' has no labels in the batch: expected keys \['box', 'digit', 'parity'\]")
def missing_head_labels(ctx):
  ctx.make_trainer().train(_batches(mutate=lambda x, y: y.pop("parity")), steps=2)


@row(r"labels key 'color' matches no head")
def label_key_of_no_head(ctx):
  ctx.make_trainer().train(_batches(mutate=lambda x, y: y.update(color=y["parity"])), steps=2)


@row(r"Head 'digit': labels must be integer class ids .*received int64 of shape \[batch, 3\]")
def wrong_label_shape(ctx):
  ctx.make_trainer().train(_batches(mutate=lambda x, y: y.update(
      digit=np.zeros((64, 3), np.int64))), steps=2)


@row(r"Head 'digit': labels must be integer class ids .*received float32")
def wrong_label_dtype(ctx):
  ctx.make_trainer().train(_batches(mutate=lambda x, y: y.update(
      digit=y["digit"].astype(np.float32))), steps=2)


@row(r"sample_weights key 'colour' matches no head")
def sample_weight_key_of_no_head(ctx):
  ctx.make_trainer().train(_batches(weights={"colour": np.ones(64, np.float32)}), steps=2)


@row(r"Head 'parity': sample weights must have shape \[batch\]; received shape \[batch, 5\]")
def sample_weights_of_the_wrong_shape(ctx):
  ctx.make_trainer().train(_batches(weights={"parity": np.ones((64, 5), np.float32)}), steps=2)


@row(r"Head 'digit' reads input='deep'; the trunk returns the features")
def head_reading_a_missing_feature(ctx):
  class TwoFeatures(keras.layers.Layer):
    def call(self, x):
      return {"wide": x, "narrow": x[:, :4]}
  ctx.make_trainer(trunk=TwoFeatures(), head_list=[heads.SoftmaxHead("digit", 10, input="deep")]
                   ).build(_SPEC)


@row(r"The global batch size \(15\) must divide into 2 replica\(s\)")
def batch_not_divisible_by_replicas(ctx):
  strategy = engine.distribution.create_strategy("mirrored", "", 2)
  with strategy.scope():
    trainer = ctx.make_trainer(strategy="mirrored", num_cpu_devices=2)
  x, y = engine.data.synthetic_arrays("train", 60)
  trainer.train(tf.data.Dataset.from_tensor_slices((x, y)).batch(15, drop_remainder=True),
                steps=2)


# --- batches: values (counted in the compiled step, raised after the loop) ----

def _train_on(ctx, mutate=None, weights=None, **config):
  ctx.make_trainer(**config).train(_batches(mutate=mutate, weights=weights), steps=4)


@row(r"At step 1, a batch failed a check: Head 'digit': class ids must be in \[0, 10\); "
     r"received values from 0 to 12\. The step was not applied and training stopped at step 0")
def class_id_out_of_range(ctx):
  _train_on(ctx, mutate=lambda x, y: y["digit"].__setitem__(3, 12))


@row(r"Head 'box': labels must be finite; received values from .* to nan")
def nan_regression_label(ctx):
  _train_on(ctx, mutate=lambda x, y: y["box"].__setitem__((3, 0), np.nan))


@row(r"Head 'digit': labels must be finite and in \[0, 1\]; received values from 0 to 1\.5")
def soft_target_outside_the_unit_interval(ctx):
  def soft(x, y):
    y["digit"] = np.eye(10, dtype=np.float32)[y["digit"]] * 1.5
  _train_on(ctx, mutate=soft)


@row(r"Head 'tags': class ids must be in \[0, 4\); received values from 0 to 4")
def sequence_label_neither_class_nor_ignore(ctx):
  x, _ = engine.data.synthetic_arrays("train", 16)
  tags = np.zeros((16, 6), np.int64)
  tags[2, 3] = 4
  trainer = ctx.make_trainer(head_list=[heads.SequenceSoftmaxHead("tags", 4)],
                             trunk=keras.Sequential([keras.layers.Dense(24),
                                                     keras.layers.Reshape((6, 4))]))
  trainer.train(dataset_of(x, {"tags": tags}, batch_size=8), steps=2)


@row(r"Head 'parity': sample weights must be finite and >= 0; received 1 bad values, from -1")
def negative_sample_weight(ctx):
  weights = np.ones(64, np.float32)
  weights[5] = -1.0
  _train_on(ctx, weights={"parity": weights})


@row(r"Head 'box': sample weights must be finite and >= 0; received 1 bad values, .*nan")
def nan_sample_weight(ctx):
  weights = np.ones(64, np.float32)
  weights[5] = np.nan
  _train_on(ctx, weights={"box": weights})


@row(r"Features 'features' hold 1 NaN or infinite values in a batch")
def nan_features(ctx):
  _train_on(ctx, mutate=lambda x, y: x.__setitem__((2, 2), np.inf))


@row(r"Head 'digit': its input features look like probabilities")
def trunk_ending_in_softmax(ctx):
  ctx.make_trainer(trunk=keras.Sequential([keras.layers.Dense(6, activation="softmax")]),
                   head_list=[heads.SoftmaxHead("digit", 10, double_softmax="raise")]).train(
                       _batches(mutate=lambda x, y: [y.pop("parity"), y.pop("box")]), steps=2)


@row(r"At step 3, the loss of head\(s\) \['box'\] became NaN or infinite\. The step was not "
     r"applied and training stopped at step 2 \(saved\)")
def nonfinite_loss(ctx):
  _train_on(ctx, mutate=lambda x, y: y["box"].__setitem__(slice(32, 34), 1e30))


@row(r"At step 5, 3 steps in a row had been skipped .*stopped at step 4 \(saved\)")
def every_step_skipped(ctx):
  x, y = engine.data.synthetic_arrays("train", 96)
  y["box"][32:] = 1e30
  ctx.make_trainer(nonfinite="skip", max_consecutive_skips=3, steps_per_loop=6).train(
      dataset_of(x, y), steps=6)


@row(r"loss finite=True skipped=1")
def skipped_steps_in_the_reported_loss(ctx):
  trainer = ctx.make_trainer(nonfinite="skip", steps_per_loop=4)
  results = trainer.train(_batches(mutate=lambda x, y: y["box"].__setitem__(
      slice(32, 34), 1e30)), steps=4)
  return f"loss finite={bool(np.isfinite(results['loss']))} skipped={int(trainer.skipped_steps)}"


@row(r"The training dataset ended at global step 4, before reaching steps=20.*repeat")
def dataset_runs_out(ctx):
  ctx.make_trainer().train(_batches(repeat=False), steps=20)


@row(r"The evaluation dataset is empty")
def empty_evaluation_dataset(ctx):
  ctx.make_trainer().evaluate(_batches(repeat=False).take(0))


@row(r"Cannot resume the input pipeline from .*ckpt-10: the training dataset differs")
def resume_with_another_pipeline(ctx):
  ctx.resumed(ctx.run_copy()).train(_batches(), steps=15)


# --- checkpoints ----------------------------------------------------------------

def _data_file(path):
  return f"{path}.data-00000-of-00001"


def _truncate(path, keep):
  with open(path, "r+b") as handle:
    handle.truncate(keep(os.path.getsize(path)))


@row(r"Cannot restore the checkpoint .*ckpt-10 into this model: model/trunk/dense/kernel "
     r"\(the trunk\): \[32, 16\] in the checkpoint, \[32, 8\] in this model")
def checkpoint_of_other_shapes(ctx):
  ctx.resumed(ctx.run_copy(), trunk=small_trunk(8)).build(_SPEC)


@row(r"box equal=True digit equal=True")
def heads_in_another_order(ctx):
  model_dir = ctx.run_copy()
  reader = tf.train.load_checkpoint(model_dir)
  order = ["box", "parity", "digit"]
  trainer = ctx.resumed(model_dir, head_list=[heads.parse_heads(engine.data.DEMO_HEADS)[
      ["digit", "parity", "box"].index(name)] for name in order])
  trainer.build(_SPEC)
  facts = []
  for head in ("box", "digit"):
    layer = {"box": "values", "digit": "logits"}[head]
    saved = reader.get_tensor(f"model/heads/{head}/{layer}/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    kernel, = [v for v in trainer.model.head_list[order.index(head)].variables
               if v.name == "kernel"]
    facts.append(f"{head} equal={np.array_equal(kernel.numpy(), saved)}")
  return " ".join(facts)


@row(r"Heads \['extra'\] are not in the checkpoint .*ckpt-10: they start from their initialisers")
def new_head(ctx):
  ctx.resumed(ctx.run_copy(), head_list=[*heads.parse_heads(engine.data.DEMO_HEADS),
                                         heads.SoftmaxHead("extra", 3)]).build(_SPEC)


@row(r"the checkpoint has heads this model lacks: \['box'\] \(restore without them with "
     r"Config\(partial_restore=True\)")
def removed_head(ctx):
  ctx.resumed(ctx.run_copy(), head_list=heads.parse_heads(engine.data.DEMO_HEADS)[:2]).build(
      _SPEC)


@row(r"written by another optimizer \(its slots: \['momentums', 'velocities'\]; this one's: "
     r"none\): restoring the model and the step count")
def another_optimizer(ctx):
  ctx.resumed(ctx.run_copy(), optimizer=keras.optimizers.SGD(0.1)).build(_SPEC)


@row(r"restored=ckpt-5 aside=\['ckpt-10.data-00000-of-00001', 'ckpt-10.index'\] "
     r"listed=\['ckpt-5'\] resaved=ckpt-10 readable=True \| Checkpoint .*ckpt-10 is damaged "
     r"and was skipped .*\| Moved the damaged checkpoint")
def truncated_newest_checkpoint(ctx):
  model_dir = ctx.run_copy()
  _truncate(_data_file(os.path.join(model_dir, "ckpt-10")), lambda size: size // 10)
  trainer = ctx.resumed(model_dir, checkpoint_iterator=False)
  dataset = engine.data.synthetic("train", 16, num_examples=256)
  trainer.train(dataset, steps=5)  # Restores what it can; nothing to train yet.
  restored = os.path.basename(trainer.checkpoints.restored)
  aside = sorted(os.listdir(os.path.join(model_dir, "damaged")))
  listed = [os.path.basename(p) for p in tf.train.get_checkpoint_state(
      model_dir).all_model_checkpoint_paths]
  trainer.train(dataset, steps=10)
  latest = tf.train.latest_checkpoint(model_dir)
  tf.train.load_checkpoint(latest).get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE")
  readable = ctx.resumed(model_dir).build(_SPEC) is None
  return (f"restored={restored} aside={aside} listed={listed} "
          f"resaved={os.path.basename(latest)} readable={readable}")


@row(r"restored=ckpt-10 step=15 \| The input position in .*ckpt-10 is damaged .*: the input "
     r"pipeline starts from its beginning")
def damaged_input_position(ctx):
  model_dir = ctx.run_copy()
  path = _data_file(os.path.join(model_dir, "ckpt-10"))
  damaged = bytearray(open(path, "rb").read())
  damaged[len(damaged) // 100] ^= 0xFF  # The input position is written first.
  open(path, "wb").write(bytes(damaged))
  trainer = ctx.resumed(model_dir)
  trainer.train(engine.data.synthetic("train", 16, num_examples=256), steps=15)
  return f"restored={os.path.basename(trainer.checkpoints.restored)} step={trainer.step}"


@row(r"Cannot write the checkpoint of step 5 into model_dir=.* \(No space left on device\): is "
     r"the disk full\? The earlier checkpoints are intact")
def disk_full(ctx):
  trainer = ctx.make_trainer(checkpoint_every=5)
  trainer.build(_SPEC)

  def full(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
  trainer.checkpoints.manager.save = full
  trainer.train(_batches(), steps=5)


@row(r"left=\[\] kept=\['ckpt-10.index', 'ckpt-5.index'\]")
def leftovers_of_killed_saves_and_exports(ctx):
  model_dir = ctx.run_copy()
  for leftover in ("ckpt-15_temp", "export/.15.tmp-999999", "export/best/.15.old-999999",
                   ".metrics.json.tmp-999999"):
    os.makedirs(os.path.join(model_dir, leftover))
  ctx.resumed(model_dir).train(engine.data.synthetic("train", 16, num_examples=256), steps=10)
  left = [p for p in ("ckpt-15_temp", "export/.15.tmp-999999", "export/best/.15.old-999999",
                      ".metrics.json.tmp-999999") if os.path.exists(os.path.join(model_dir, p))]
  kept = sorted(n for n in os.listdir(model_dir) if n.endswith(".index"))
  return f"left={left} kept={kept}"


def _lock(model_dir, pid):
  with open(os.path.join(model_dir, writer.FILENAME), "w", encoding="utf-8") as handle:
    handle.write(f'{{"pid": {pid}, "host": "{os.uname().nodename}", "time": "then"}}')


@row(rf"RuntimeError: model_dir=.* is being written by another trainer: process {os.getppid()} "
     r"on .* since then")
def second_writer(ctx):
  model_dir = ctx.run_copy()
  _lock(model_dir, os.getppid())  # A live process: pytest's parent.
  ctx.resumed(model_dir).train(engine.data.synthetic("train", 16, num_examples=256), steps=15)


@row(r"step=15 lock_left=False \| Taking over the stale lock .* of process 999999999")
def stale_lock_of_a_killed_writer(ctx):
  model_dir = ctx.run_copy()
  _lock(model_dir, 999999999)
  trainer = ctx.resumed(model_dir)
  trainer.train(engine.data.synthetic("train", 16, num_examples=256), steps=15)
  return (f"step={trainer.step} "
          f"lock_left={os.path.exists(os.path.join(model_dir, writer.FILENAME))}")


def _signal_during_save(ctx, signum):
  """Sends `signum` to this process while the checkpoint of step 5 is being written."""
  if threading.current_thread() is not threading.main_thread():
    raise AssertionError("signal rows need the main thread")
  trainer = ctx.make_trainer(checkpoint_every=5, steps_per_loop=5)
  trainer.build(_SPEC)
  save = trainer.checkpoints.manager.save

  def save_and_signal(*args, **kwargs):
    os.kill(os.getpid(), signum)
    return save(*args, **kwargs)
  trainer.checkpoints.manager.save = save_and_signal
  try:
    trainer.train(_batches(), steps=100)
  except engine.Preempted as stopped:
    latest = os.path.basename(tf.train.latest_checkpoint(trainer.config.model_dir))
    return f"{type(stopped).__name__} code={stopped.code} step={trainer.step} latest={latest}"
  return f"not stopped: step={trainer.step}"


@row(r"Preempted code=42 step=5 latest=ckpt-5")
def sigterm_during_a_save(ctx):
  return _signal_during_save(ctx, signal.SIGTERM)


@row(r"Interrupted code=130 step=5 latest=ckpt-5 \| Ctrl-C: saving a checkpoint after this "
     r"loop.*SIGINT: saved a checkpoint at step 5; exiting with code 130")
def sigint(ctx):
  return _signal_during_save(ctx, signal.SIGINT)


@row(r"TFRecord file\] \[.*bad-00000-of-00001\] \[: key x must hold 2 values")
def incomplete_tfrecord(ctx):
  prefix = str(ctx.tmp_path / "bad")
  engine.data.write_tfrecords({"x": np.zeros([4, 3], np.float32),
                               "digit": np.zeros([4], np.int64)}, prefix)
  specs = engine.records.parse_feature_specs("x:float:2")
  next(iter(engine.data.tfrecord(f"{prefix}-*", specs, [heads.SoftmaxHead("digit", 10)], 2,
                                 training=False)))


@row(r"The input data is damaged .*train-00000-of-00001 \(after \d+ good records.*Training "
     r"stopped at step \d+ \(saved\)")
def corrupt_tfrecord(ctx):
  x, labels = engine.data.synthetic_arrays("train", 256)
  path, = engine.data.write_tfrecords({"features": x, **labels}, str(ctx.tmp_path / "train"))
  damaged = bytearray(open(path, "rb").read())
  damaged[int(len(damaged) * 0.9)] ^= 0xFF
  open(path, "wb").write(bytes(damaged))
  head_list = heads.parse_heads(engine.data.DEMO_HEADS)
  specs = engine.records.parse_feature_specs("features:float:32")
  trainer = ctx.make_trainer(trunk=tfrecord_experiment.FlatTrunk(specs, (16,)),
                             head_list=head_list)
  trainer.train(engine.data.tfrecord(path, specs, head_list, batch_size=16, training=True,
                                     shuffle_buffer=1), steps=100)


# --- scripts ---------------------------------------------------------------------

_TRAIN = [sys.executable, os.path.join(_ROOT, "scripts", "train.py"), "--train_steps=4000",
          "--steps_per_loop=200", "--checkpoint_every=2000", "--eval_every=0", "--nojit_compile",
          "--nohead_diagnostics", "--experiment_params=num_train_examples=4096"]


def _script(*command, timeout=300):
  return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout,
                        cwd=_ROOT, check=False)


@pytest.fixture(scope="module")
def two_writers(tmp_path_factory):
  """train.py A, and train.py B started on A's model_dir while A trains: (dir, A, B, A's pid)."""
  model_dir = str(tmp_path_factory.mktemp("two_writers"))
  first = subprocess.Popen([*_TRAIN, f"--model_dir={model_dir}"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=_ROOT)
  try:
    for line in first.stderr:  # Training: A holds the lock.
      if "train | step" in line:
        break
    second = _script(*_TRAIN, f"--model_dir={model_dir}")
    out, err = first.communicate(timeout=300)
  finally:
    if first.poll() is None:
      first.kill()
  return model_dir, subprocess.CompletedProcess(first.args, first.returncode, out, err), \
      second, first.pid


@row(r"first rc=0 latest=ckpt-4000 \| second rc=1: .*RuntimeError: model_dir=.* is being "
     r"written by another trainer: process (\d+) on .* since .* first pid=\1 ")
def second_train_py_on_one_model_dir(ctx):
  model_dir, first, second, pid = ctx.fixture("two_writers")
  latest = os.path.basename(tf.train.latest_checkpoint(model_dir))
  return (f"first rc={first.returncode} latest={latest} | second rc={second.returncode}: "
          f"{second.stderr.strip().splitlines()[-1]} first pid={pid}")


@row(r"rerun rc=0 restored=ckpt-2000 latest=ckpt-4000 evaluate rc=0 step=4000")
def truncated_newest_checkpoint_then_the_scripts(ctx):
  model_dir = str(ctx.tmp_path / "run")
  shutil.copytree(ctx.fixture("two_writers")[0], model_dir)
  _truncate(_data_file(os.path.join(model_dir, "ckpt-4000")), lambda size: size // 10)
  rerun = _script(*_TRAIN, f"--model_dir={model_dir}")
  restored = re.findall(r"Restored .*(ckpt-\d+) at step", rerun.stderr)
  evaluated = _script(sys.executable, os.path.join(_ROOT, "scripts", "evaluate.py"),
                      f"--model_dir={model_dir}")
  step = json.load(open(os.path.join(model_dir, "eval", "metrics.json")))["step"]
  return (f"rerun rc={rerun.returncode} restored={restored[0] if restored else None} "
          f"latest={os.path.basename(tf.train.latest_checkpoint(model_dir))} "
          f"evaluate rc={evaluated.returncode} step={step}")


@pytest.mark.parametrize("name", sorted(ROWS))
def test_fault(name, make_trainer, tmp_path, trained, request):
  function, expected = ROWS[name]
  text = outcome(function, Context(make_trainer, tmp_path, trained, request))
  assert re.search(expected, text, re.S), text
