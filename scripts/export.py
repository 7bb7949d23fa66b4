r"""Exports the latest checkpoint of a model_dir as a serving SavedModel; needs no data.

  python scripts/export.py --model_dir=runs/demo            # -> runs/demo/export/<step>
  python scripts/export.py --model_dir=runs/demo --export_dir=/serving/demo/1

The model comes from the settings the run kept (model_dir/config.flags).
The signature `serving_default` takes the features (a dict: one input per
name) and returns `<head>/probabilities`, `<head>/classes` or
`<head>/values`.
"""

from absl import app
from absl import flags
from absl import logging

import common  # pylint: disable=g-bad-import-order
import engine

# --help and --helpshort list the engine's flags (one per engine.Config field).
flags.adopt_module_key_flags(engine.config_flags)

_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "Where to write the SavedModel; unset: model_dir/export/<step>.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  trainer, experiment = common.make_trainer()
  common.restore_latest(trainer, experiment)
  print(trainer.export(_EXPORT_DIR.value))


if __name__ == "__main__":
  app.run(main)
