r"""Trains an experiment; by default the demo on synthetic data.

  python scripts/train.py --model_dir=runs/demo
  python scripts/train.py --model_dir=runs/faces --experiment=images --train_steps=2000
  python scripts/train.py --model_dir=runs/mine --experiment=my_package.my_module:my_fn \
      --experiment_params=width=128,depth=4 --optimizer=sgd --lr_schedule=cosine
  python scripts/train.py --flagfile=runs/demo/config.flags --model_dir=runs/demo2

Every flag is an `engine.Config` field (`--help` lists them). The first
run writes its settings to model_dir/config.flags; rerunning with the same
--model_dir resumes from the latest checkpoint with those settings (flags
given again override those that do not change the model).
"""

from absl import app
from absl import flags
from absl import logging

import common  # pylint: disable=g-bad-import-order
import engine

# --help and --helpshort list the engine's flags (one per engine.Config field).
flags.adopt_module_key_flags(engine.config_flags)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  trainer, experiment = common.make_trainer()
  config = trainer.config
  train_data = experiment.train_data(config.batch_size, config.seed)
  eval_data = experiment.eval_data(config.batch_size) if experiment.eval_data else None
  trainer.summaries.write_hparams(engine.run_config.hparams(config),
                                  trainer.metric_names if eval_data else ["loss"],
                                  run="eval" if eval_data else "train")
  results = trainer.train(train_data, steps=config.train_steps, eval_dataset=eval_data)
  if eval_data is not None:
    print(engine.progress.metrics_table(results, trainer.model.head_names))


if __name__ == "__main__":
  app.run(main)
