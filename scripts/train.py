r"""Trains a multi-head model; with no data flags, the demo on synthetic data.

  python scripts/train.py --model_dir=runs/demo
  python scripts/train.py --flagfile=my_run.flags
  python scripts/train.py --strategy=mirrored --precision=mixed_float16   # all local GPUs
  python scripts/train.py --model_dir=runs/tfr --train_data='data/train-*' \
      --eval_data='data/eval-*' --num_features=32 \
      --heads=digit:softmax:10,parity:softmax:2:0.5,box:regression:4:0.25

Rerunning the same command resumes from the latest checkpoint in model_dir.
The model, data and distribution flags are in common.py and shared with
evaluate.py, export.py and calibrate.py.
"""

import sys

from absl import app
from absl import flags
from absl import logging

import common  # pylint: disable=g-bad-import-order
import engine

_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 3000, "Train until this global step.", lower_bound=1)
_STEPS_PER_LOOP = flags.DEFINE_integer(
    "steps_per_loop", 100, "Steps per compiled loop call (and per log line).", lower_bound=1)
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 1000, "Save a checkpoint every this many steps.", lower_bound=1)
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every", 1000, "Evaluate every this many steps (0: only at the end).", lower_bound=0)
_TRAIN_DATA = flags.DEFINE_string(
    "train_data", None, "TFRecord file pattern of tf.train.Example; unset: synthetic demo data.")
_NUM_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "num_train_examples", 65536, "Size of the synthetic training set (without --train_data).",
    lower_bound=1)
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
_HEAD_DIAGNOSTICS = flags.DEFINE_boolean(
    "head_diagnostics", True, "On the last step of each loop (from the second loop on), "
    "compute each head's gradient norm on the trunk and the cosines between heads' gradients "
    "(TensorBoard).")
_TRAIN_METRICS = flags.DEFINE_enum(
    "train_metrics", "basic", list(engine.config.TRAIN_METRICS),
    "basic: each head's loss and main metric in training (sums inside the compiled step); "
    "full: every evaluation metric in every training step (slower).")
_PROFILE_STEPS = flags.DEFINE_list(
    "profile_steps", None, "START,END: trace steps START+1..END into model_dir for "
    "TensorBoard's Profile tab.")
_BEST_METRIC = flags.DEFINE_string(
    "best_metric", None, "An eval result, e.g. digit/accuracy: keep an export of the best "
    "evaluation so far in model_dir/export/best/<step>.")
_BEST_METRIC_GOAL = flags.DEFINE_enum(
    "best_metric_goal", "auto", list(engine.config.BEST_METRIC_GOALS),
    "Whether higher (max) or lower (min) --best_metric is better; auto: min for losses, nll, "
    "ece, mae, rmse, perplexity.")

flags.register_validator(
    "profile_steps", lambda v: v is None or (len(v) == 2 and all(s.isdigit() for s in v)),
    message="--profile_steps must be two steps START,END, e.g. 100,110.")
flags.register_multi_flags_validator(
    ["train_data", "eval_data"], lambda f: bool(f["train_data"]) or not f["eval_data"],
    message="--eval_data needs --train_data (without it the demo uses synthetic data).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  trainer, head_list = common.make_trainer(
      steps_per_loop=_STEPS_PER_LOOP.value, checkpoint_every=_CHECKPOINT_EVERY.value,
      eval_every=_EVAL_EVERY.value, clip_norm=_CLIP_NORM.value or None,
      accumulation_steps=_ACCUMULATION_STEPS.value, nonfinite=_NONFINITE.value,
      head_diagnostics=_HEAD_DIAGNOSTICS.value, train_metrics=_TRAIN_METRICS.value,
      profile_steps=_PROFILE_STEPS.value and tuple(int(s) for s in _PROFILE_STEPS.value),
      best_metric=_BEST_METRIC.value, best_metric_goal=_BEST_METRIC_GOAL.value)
  if _TRAIN_DATA.value:
    train_data = engine.data.tfrecord(
        _TRAIN_DATA.value, head_list, common.NUM_FEATURES.value, common.BATCH_SIZE.value,
        training=True, shuffle_seed=common.SEED.value)
    eval_data = common.eval_data(head_list) if common.EVAL_DATA.value else None
  else:
    train_data = engine.data.synthetic("train", common.BATCH_SIZE.value,
                                       num_examples=_NUM_TRAIN_EXAMPLES.value,
                                       shuffle_seed=common.SEED.value)
    eval_data = common.eval_data(head_list)
  script_flags = [flag for module in (sys.modules[__name__], common)
                  for flag in flags.FLAGS.get_flags_for_module(module)]
  engine.summaries.write_hparams(trainer.config.model_dir,
                                 {flag.name: flag.value for flag in script_flags},
                                 trainer.metric_names)
  results = trainer.train(train_data, steps=_TRAIN_STEPS.value, eval_dataset=eval_data)
  if eval_data is not None:
    print(engine.progress.metrics_table(results, trainer.model.head_names))


if __name__ == "__main__":
  app.run(main)
