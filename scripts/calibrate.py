r"""Fits one temperature per classification head on held-out data (Guo et al., 2017).

  python scripts/calibrate.py --model_dir=runs/demo --eval_data='data/heldout-*'

Restores the latest checkpoint, prints ECE and NLL per head before and
after, then stores the temperatures with the model: a checkpoint of the same
step is rewritten, and an export is written to model_dir/export/<step>.
Without --eval_data the synthetic eval split is the held-out set.
"""

from absl import app
from absl import logging

import common  # pylint: disable=g-bad-import-order
import engine


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  trainer, head_list = common.make_trainer()
  common.restore_latest(trainer)
  held_out = common.eval_data(head_list)
  before = trainer.evaluate(held_out)
  temperatures = engine.calibration.calibrate(trainer.model, trainer.heads, held_out,
                                              common.EVAL_STEPS.value)
  if not temperatures:
    raise app.UsageError(f"No head of --heads={common.HEADS.value} has a temperature to fit "
                         "(only softmax heads do).")
  after = trainer.evaluate(held_out)
  print(engine.calibration.report(before, after, temperatures))
  trainer.save_checkpoint()
  print(trainer.export())


if __name__ == "__main__":
  app.run(main)
