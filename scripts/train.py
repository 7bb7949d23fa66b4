r"""Trains a multi-head model; with no data flags, the demo on synthetic data.

  python scripts/train.py --model_dir=runs/demo
  python scripts/train.py --flagfile=my_run.flags
  python scripts/train.py --strategy=mirrored --precision=mixed_float16   # all local GPUs
  python scripts/train.py --model_dir=runs/tfr --train_data='data/train-*' \
      --eval_data='data/eval-*' --num_features=32 \
      --heads=digit:softmax:10,parity:softmax:2:0.5,box:regression:4:0.25

Rerunning the same command resumes from the latest checkpoint in model_dir.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import keras

import engine
import heads

_MODEL_DIR = flags.DEFINE_string("model_dir", "runs/demo", "Checkpoints and summaries go here.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 3000, "Train until this global step.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "AdamW learning rate.", lower_bound=0.0)
_STEPS_PER_LOOP = flags.DEFINE_integer(
    "steps_per_loop", 100, "Steps per compiled loop call (and per log line).", lower_bound=1)
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 1000, "Save a checkpoint every this many steps.", lower_bound=1)
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every", 1000, "Evaluate every this many steps (0: only at the end).", lower_bound=0)
_JIT_COMPILE = flags.DEFINE_boolean("jit_compile", True, "Compile the steps with XLA.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for initial weights and shuffling.", lower_bound=0)
_HEADS = flags.DEFINE_string(
    "heads", engine.data.DEMO_HEADS,
    "Comma-separated heads, each name:kind:size[:weight] (kinds: softmax, regression).")
_HIDDEN_UNITS = flags.DEFINE_list("hidden_units", ["128", "128"], "Widths of the trunk's Dense layers.")
_TRAIN_DATA = flags.DEFINE_string(
    "train_data", None, "TFRecord file pattern of tf.train.Example; unset: synthetic demo data.")
_EVAL_DATA = flags.DEFINE_string("eval_data", None, "TFRecord file pattern for evaluation.")
_PRECISION = flags.DEFINE_enum(
    "precision", "float32", list(engine.precision.PRECISIONS),
    "float32, mixed_float16 (GPU, with dynamic loss scaling) or mixed_bfloat16 (TPU, CPU).")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "auto", list(engine.distribution.STRATEGIES),
    "tf.distribute strategy; auto picks TPU, multi-worker (TF_CONFIG), mirrored or one device.")
_TPU = flags.DEFINE_string("tpu", "", "TPU name or grpc:// address; empty on a TPU VM.")
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", 0, "Split the CPU into this many logical devices (to test mirrored).",
    lower_bound=0)
_CLIP_NORM = flags.DEFINE_float(
    "clip_norm", None, "Clip gradients to this global norm (over all replicas); unset or 0: "
    "no clipping.", lower_bound=0.0)
_ACCUMULATION_STEPS = flags.DEFINE_integer(
    "accumulation_steps", 1, "Micro-batches per replica batch; the update equals the whole "
    "batch's.", lower_bound=1)
_NONFINITE = flags.DEFINE_enum(
    "nonfinite", "raise", ["raise", "skip"],
    "A step whose loss or gradients are NaN/Inf is never applied; raise: stop naming the "
    "heads and the step; skip: count it per head (TensorBoard) and go on.")
_NUM_FEATURES = flags.DEFINE_integer(
    "num_features", engine.data.NUM_FEATURES, "Length of the `features` float list in TFRecords.",
    lower_bound=1)

flags.register_validator(
    "hidden_units", lambda units: all(u.isdigit() and int(u) > 0 for u in units),
    message="--hidden_units must be positive integers, e.g. 128,128.")
flags.register_multi_flags_validator(
    ["train_data", "eval_data"], lambda f: bool(f["train_data"]) or not f["eval_data"],
    message="--eval_data needs --train_data (without it the demo uses synthetic data).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  config = engine.Config(
      model_dir=_MODEL_DIR.value, steps_per_loop=_STEPS_PER_LOOP.value,
      checkpoint_every=_CHECKPOINT_EVERY.value, eval_every=_EVAL_EVERY.value,
      jit_compile=_JIT_COMPILE.value, seed=_SEED.value, precision=_PRECISION.value,
      strategy=_STRATEGY.value, tpu=_TPU.value, num_cpu_devices=_NUM_CPU_DEVICES.value,
      clip_norm=_CLIP_NORM.value or None, accumulation_steps=_ACCUMULATION_STEPS.value,
      nonfinite=_NONFINITE.value)
  strategy = engine.create_strategy(config)  # Before any other op: it may split the CPU.
  engine.set_precision(config.precision)  # Before any layer is made.
  with strategy.scope():  # Every variable, metrics' too, is made under the strategy.
    head_list = heads.parse_heads(_HEADS.value, flag="--heads")
    trainer = engine.Trainer(
        trunk=keras.Sequential([keras.layers.Dense(int(units), activation="relu")
                                for units in _HIDDEN_UNITS.value]),
        heads=head_list,
        optimizer=keras.optimizers.AdamW(_LEARNING_RATE.value),
        config=config)
  if _TRAIN_DATA.value:
    train_data = engine.data.tfrecord(_TRAIN_DATA.value, head_list, _NUM_FEATURES.value,
                                      _BATCH_SIZE.value, training=True, shuffle_seed=_SEED.value)
    eval_data = _EVAL_DATA.value and engine.data.tfrecord(
        _EVAL_DATA.value, head_list, _NUM_FEATURES.value, _BATCH_SIZE.value, training=False)
  else:
    train_data = engine.data.synthetic("train", _BATCH_SIZE.value, num_examples=65536,
                                       shuffle_seed=_SEED.value)
    eval_data = engine.data.synthetic("eval", _BATCH_SIZE.value, num_examples=4096)
  results = trainer.train(train_data, steps=_TRAIN_STEPS.value, eval_dataset=eval_data or None)
  if eval_data:
    print(engine.progress.metrics_table(results, trainer.model.head_names))


if __name__ == "__main__":
  app.run(main)
