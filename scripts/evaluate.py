r"""Evaluates checkpoints of a model_dir: per-head metrics to TensorBoard and JSON.

  python scripts/evaluate.py --model_dir=runs/demo                    # the latest checkpoint
  python scripts/evaluate.py --model_dir=runs/demo --checkpoint=runs/demo/ckpt-2000
  python scripts/evaluate.py --model_dir=runs/demo --follow --train_steps=3000   # beside training

Results go to model_dir/eval (TensorBoard: scalars and pictures) and to
--output_json (default model_dir/eval/metrics.json), replaced atomically
after each evaluation. With --follow, every new checkpoint is evaluated as
it appears; the script exits once a checkpoint reaches --train_steps, or
after --timeout seconds without a new one.
"""

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

import common  # pylint: disable=g-bad-import-order
import engine

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A checkpoint path; unset: the latest.")
_FOLLOW = flags.DEFINE_boolean("follow", False, "Evaluate each new checkpoint as it appears.")
_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps", None, "With --follow: exit after evaluating a checkpoint of this step.",
    lower_bound=1)
_TIMEOUT = flags.DEFINE_integer(
    "timeout", 3600, "With --follow: exit after this many seconds without a new checkpoint.",
    lower_bound=1)
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "Where to write the metrics as JSON; unset: model_dir/eval/metrics.json.")

flags.register_multi_flags_validator(
    ["follow", "checkpoint"], lambda f: not (f["follow"] and f["checkpoint"]),
    message="--follow evaluates new checkpoints as they appear; it cannot take --checkpoint.")


def _evaluate(trainer, checkpoint, dataset, output_json):
  trainer.restore(checkpoint)
  results = trainer.evaluate(dataset)
  engine.atomic.write_json(output_json, {"checkpoint": checkpoint, "step": trainer.step,
                                         "metrics": results})
  print(f"step {trainer.step} ({checkpoint})")
  print(engine.progress.metrics_table(results, trainer.model.head_names), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  trainer, head_list = common.make_trainer()
  dataset = common.eval_data(head_list)
  output_json = _OUTPUT_JSON.value or tf.io.gfile.join(common.MODEL_DIR.value, "eval",
                                                       "metrics.json")
  if not _FOLLOW.value:
    common.restore_latest(trainer)
    _evaluate(trainer, _CHECKPOINT.value or trainer.latest_checkpoint, dataset, output_json)
    return
  trainer.build(tf.TensorSpec([None, common.NUM_FEATURES.value], tf.float32))
  for checkpoint in tf.train.checkpoints_iterator(common.MODEL_DIR.value, timeout=_TIMEOUT.value):
    try:
      _evaluate(trainer, checkpoint, dataset, output_json)
    except ValueError as error:  # Deleted by the trainer's max_checkpoints before we read it.
      logging.warning("Skipped %s: %s", checkpoint, error)
      continue
    if _TRAIN_STEPS.value is not None and trainer.step >= _TRAIN_STEPS.value:
      return
  logging.info("No new checkpoint for %d s: done.", _TIMEOUT.value)


if __name__ == "__main__":
  app.run(main)
