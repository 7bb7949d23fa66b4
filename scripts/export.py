r"""Exports the latest checkpoint of a model_dir as a serving SavedModel; needs no data.

  python scripts/export.py --model_dir=runs/demo            # -> runs/demo/export/<step>
  python scripts/export.py --model_dir=runs/demo --export_dir=/serving/demo/1

Pass the same model flags (--heads, --hidden_units, --num_features) as for
training, e.g. with the same --flagfile. The signature `serving_default`
takes `features` and returns `<head>/probabilities`, `<head>/classes` or
`<head>/values`.
"""

from absl import app
from absl import flags
from absl import logging

import common  # pylint: disable=g-bad-import-order

_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "Where to write the SavedModel; unset: model_dir/export/<step>.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  trainer, _ = common.make_trainer()
  common.restore_latest(trainer)
  print(trainer.export(_EXPORT_DIR.value))


if __name__ == "__main__":
  app.run(main)
