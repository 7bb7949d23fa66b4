r"""Evaluates checkpoints of a model_dir: per-head metrics to TensorBoard and JSON.

The model and its eval data come from the settings the run kept
(model_dir/config.flags), so --model_dir is all it needs.

  python scripts/evaluate.py --model_dir=runs/demo                    # the latest checkpoint
  python scripts/evaluate.py --model_dir=runs/demo --checkpoint=runs/demo/ckpt-2000
  python scripts/evaluate.py --model_dir=runs/demo --follow   # beside training

Results go to model_dir/eval (TensorBoard: scalars and pictures) and to
--output_json (default model_dir/eval/metrics.json), replaced atomically
after each evaluation. With --follow, every new checkpoint is evaluated as
it appears; the script exits once a checkpoint reaches the run's train_steps, or
after --timeout seconds without a new one.
"""

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

import common  # pylint: disable=g-bad-import-order
import engine

# --help and --helpshort list the engine's flags (one per engine.Config field).
flags.adopt_module_key_flags(engine.config_flags)

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A checkpoint path; unset: the latest.")
_FOLLOW = flags.DEFINE_boolean("follow", False, "Evaluate each new checkpoint as it appears.")
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


def _model_and_data():
  """The Trainer (built) and eval data of the run --model_dir keeps."""
  trainer, experiment = common.make_trainer()
  if experiment.eval_data is None:
    raise app.UsageError(f"experiment {trainer.config.experiment!r} has no evaluation data "
                         "(e.g. tfrecord without experiment_params eval_data).")
  dataset = experiment.eval_data(trainer.config.batch_size)
  trainer.build(dataset.element_spec[0])
  return trainer, dataset


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  output_json = _OUTPUT_JSON.value or tf.io.gfile.join(common.FLAGS.model_dir, "eval",
                                                       "metrics.json")
  if not _FOLLOW.value:
    trainer, dataset = _model_and_data()
    if _CHECKPOINT.value is None:
      common.check_restored(trainer)  # The newest readable checkpoint (damaged ones skipped).
    _evaluate(trainer, _CHECKPOINT.value or trainer.restored_checkpoint, dataset, output_json)
    return
  trainer = dataset = None
  for checkpoint in tf.train.checkpoints_iterator(common.FLAGS.model_dir,
                                                  timeout=_TIMEOUT.value):
    if trainer is None:  # The run's settings are kept by the time it saves.
      trainer, dataset = _model_and_data()
    try:
      _evaluate(trainer, checkpoint, dataset, output_json)
    except ValueError as error:  # Deleted by the trainer's max_checkpoints before we read it.
      logging.warning("Skipped %s: %s", checkpoint, error)
      continue
    if trainer.step >= trainer.config.train_steps:
      return
  logging.info("No new checkpoint for %d s: done.", _TIMEOUT.value)


if __name__ == "__main__":
  app.run(main)
