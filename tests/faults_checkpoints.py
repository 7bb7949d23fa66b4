"""Fault-table rows: checkpoints, writers, signals, leftovers, and the scripts."""

import json
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
import heads
from engine import writer
from tests import warm_python
from tests.conftest import small_trunk
from tests.fault_table import ROOT as _ROOT
from tests.fault_table import SPEC
from tests.fault_table import batches as _batches
from tests.fault_table import row


# --- checkpoints ----------------------------------------------------------------

def _data_file(path):
  return f"{path}.data-00000-of-00001"


def _truncate(path, keep):
  with open(path, "r+b") as handle:
    handle.truncate(keep(os.path.getsize(path)))


@row(r"Cannot restore the checkpoint .*ckpt-10 into this model: model/trunk/dense/kernel "
     r"\(the trunk\): \[32, 16\] in the checkpoint, \[32, 8\] in this model")
def checkpoint_of_other_shapes(ctx):
  ctx.resumed(ctx.run_copy(), trunk=small_trunk(8)).build(SPEC)


@row(r"box equal=True digit equal=True")
def heads_in_another_order(ctx):
  model_dir = ctx.run_copy()
  reader = tf.train.load_checkpoint(model_dir)
  order = ["box", "parity", "digit"]
  trainer = ctx.resumed(model_dir, head_list=[heads.parse_heads(engine.data.DEMO_HEADS)[
      ["digit", "parity", "box"].index(name)] for name in order])
  trainer.build(SPEC)
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
                                         heads.SoftmaxHead("extra", 3)]).build(SPEC)


@row(r"the checkpoint has heads this model lacks: \['box'\] \(restore without them with "
     r"Config\(partial_restore=True\)")
def removed_head(ctx):
  ctx.resumed(ctx.run_copy(), head_list=heads.parse_heads(engine.data.DEMO_HEADS)[:2]).build(
      SPEC)


@row(r"written by another optimizer \(its slots: \['momentums', 'velocities'\]; this one's: "
     r"none\): restoring the model and the step count")
def another_optimizer(ctx):
  ctx.resumed(ctx.run_copy(), optimizer=keras.optimizers.SGD(0.1)).build(SPEC)


@row(r"save_checkpoint needs the model's variables: call train, evaluate, predict or build")
def save_checkpoint_before_build(ctx):
  ctx.make_trainer().save_checkpoint()


@row(r"Cannot warm-start \['trunk'\] from init_checkpoint=.*: model/trunk/dense/kernel "
     r"\(the trunk\): \[32, 16\] in the checkpoint, \[32, 8\] in this model")
def init_checkpoint_that_does_not_fit(ctx):
  ctx.make_trainer(init_checkpoint=ctx.run_copy(), trunk=small_trunk(8)).build(SPEC)


@row(r"rc=1 .*No checkpoint in --model_dir=.*: train first")
def export_without_a_checkpoint(ctx):
  done = _script(sys.executable, os.path.join(_ROOT, "scripts", "export.py"),
                 f"--model_dir={ctx.tmp_path / 'empty'}")
  return f"rc={done.returncode} {done.stderr.strip().splitlines()[-1]}"


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
  readable = ctx.resumed(model_dir).build(SPEC) is None
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
  trainer.build(SPEC)

  def full(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
  trainer.checkpoints.manager.save = full
  trainer.train(_batches(), steps=5)


_LEFTOVERS = ("ckpt-15_temp", "export/.15.tmp-999999", "export/best/.15.old-999999",
              ".metrics.json.tmp-999999")


@row(r"left=\[\] kept=\['ckpt-10.index', 'ckpt-5.index'\] reader's staging kept=True")
def leftovers_of_killed_saves_and_exports(ctx):
  model_dir = ctx.run_copy()
  working = f"export/.20.tmp-{os.getppid()}"  # export.py at work (a live process): kept.
  for leftover in (*_LEFTOVERS, working):
    os.makedirs(os.path.join(model_dir, leftover))
  ctx.resumed(model_dir).train(engine.data.synthetic("train", 16, num_examples=256), steps=10)
  left = [p for p in _LEFTOVERS if os.path.exists(os.path.join(model_dir, p))]
  kept = sorted(n for n in os.listdir(model_dir) if n.endswith(".index"))
  return (f"left={left} kept={kept} reader's staging "
          f"kept={os.path.exists(os.path.join(model_dir, working))}")


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
  trainer.build(SPEC)
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




# --- scripts ---------------------------------------------------------------------

_TRAIN = [sys.executable, os.path.join(_ROOT, "scripts", "train.py"), "--train_steps=1000",
          "--steps_per_loop=200", "--checkpoint_every=200", "--eval_every=0", "--nojit_compile",
          "--nohead_diagnostics", "--experiment_params=num_train_examples=4096"]


def _script(*command, timeout=300):
  return warm_python.run(list(command), capture_output=True, text=True, timeout=timeout,
                         cwd=_ROOT, check=False)


@pytest.fixture(scope="module")
def two_writers(tmp_path_factory):
  """train.py A, and train.py B started on A's model_dir while A trains: (dir, A, B, A's pid).

  A is paused (SIGSTOP) while B runs, so A need not train for as long as B takes to
  start, and B cannot miss it; A holds the lock all along (a process, not a heartbeat).
  """
  model_dir = str(tmp_path_factory.mktemp("two_writers"))
  first = warm_python.Popen([*_TRAIN, f"--model_dir={model_dir}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=_ROOT)
  try:
    for line in first.stderr:  # Training: A holds the lock.
      if "train | step" in line:
        break
    os.kill(first.pid, signal.SIGSTOP)
    try:
      second = _script(*_TRAIN, f"--model_dir={model_dir}")
    finally:
      os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
  finally:
    if first.poll() is None:
      first.kill()
  return model_dir, subprocess.CompletedProcess(first.args, first.returncode, out, err), \
      second, first.pid


@row(r"first rc=0 latest=ckpt-1000 \| second rc=1: .*RuntimeError: model_dir=.* is being "
     r"written by another trainer: process (\d+) on .* since .* first pid=\1 ")
def second_train_py_on_one_model_dir(ctx):
  model_dir, first, second, pid = ctx.fixture("two_writers")
  latest = os.path.basename(tf.train.latest_checkpoint(model_dir))
  return (f"first rc={first.returncode} latest={latest} | second rc={second.returncode}: "
          f"{second.stderr.strip().splitlines()[-1]} first pid={pid}")


_STEP_KEY = "global_step/.ATTRIBUTES/VARIABLE_VALUE"


@row(r"before: evaluate rc=0 step=800 damaged_moved=False ckpt-1000 skipped=True \| "
     r"rerun rc=0 restored=ckpt-800 latest=ckpt-1000 \| after: every tensor read, step=1000")
def truncated_newest_checkpoint_then_the_scripts(ctx):
  """evaluate.py falls back (moving nothing: a reader); train.py replaces the damaged one
  (its replacement is read back whole in-process; evaluate.py on good checkpoints is
  tested by the serving tests)."""
  model_dir = str(ctx.tmp_path / "run")
  shutil.copytree(ctx.fixture("two_writers")[0], model_dir)
  _truncate(_data_file(os.path.join(model_dir, "ckpt-1000")), lambda size: size // 10)

  def evaluate():
    done = _script(sys.executable, os.path.join(_ROOT, "scripts", "evaluate.py"),
                   f"--model_dir={model_dir}")
    step = json.load(open(os.path.join(model_dir, "eval", "metrics.json")))["step"]
    return done, f"evaluate rc={done.returncode} step={step}"
  early, early_text = evaluate()
  moved = os.path.exists(os.path.join(model_dir, "damaged"))
  skipped = bool(re.search(r"ckpt-1000 is damaged and was skipped", early.stderr))
  rerun = _script(*_TRAIN, f"--model_dir={model_dir}")
  restored = re.findall(r"Restored .*(ckpt-\d+) at step", rerun.stderr)
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  for key in reader.get_variable_to_shape_map():
    if not key.endswith("ITERATOR_STATE"):  # A variant, which NumPy cannot hold.
      reader.get_tensor(key)  # Raises on a damaged file.
  late_text = f"every tensor read, step={reader.get_tensor(_STEP_KEY)}"
  return (f"before: {early_text} damaged_moved={moved} ckpt-1000 skipped={skipped} | "
          f"rerun rc={rerun.returncode} restored={restored[0] if restored else None} "
          f"latest={os.path.basename(tf.train.latest_checkpoint(model_dir))} | after: "
          f"{late_text}")
