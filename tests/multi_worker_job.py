"""One worker of the multi-worker test (run by test_multi_worker.py, not by pytest).

    TF_CONFIG=... python tests/multi_worker_job.py OUTPUT.npz MODEL_DIR [STEPS]

Trains the shared model for STEPS steps (default 5) under
MultiWorkerMirroredStrategy and saves its initial and final weights.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

import engine
import heads

STEPS = 5
GLOBAL_BATCH = 32


def make_trainer(model_dir, config_args=None, checkpoint_every=1000):
  return engine.Trainer(
      trunk=keras.Sequential([keras.layers.Dense(16, activation="relu")]),
      heads=heads.parse_heads(engine.data.DEMO_HEADS),
      # Linear in the gradient: Adam would turn the reduction order's last-bit
      # differences on near-zero gradients into visible ones.
      optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
      # Without XLA: this is about the cluster (collectives, preemption, exactness), and
      # each of the four worker processes would compile its own gradients program
      # (XLA under replicas: test_distribution).
      config=engine.Config(model_dir=model_dir, steps_per_loop=STEPS, seed=0,
                           checkpoint_every=checkpoint_every, head_diagnostics=False,
                           jit_compile=False, **(config_args or {})))


def dataset():
  """Global batches; parity labels absent (weight 0) on every third example."""
  x, labels = engine.data.synthetic_arrays("train", 256)
  weights = {"parity": np.where(np.arange(256) % 3 == 0, 0.0, 1.0).astype(np.float32)}
  return tf.data.Dataset.from_tensor_slices((x, labels, weights)).batch(
      GLOBAL_BATCH, drop_remainder=True).repeat()


def main(output, model_dir, steps=STEPS):
  strategy = engine.create_strategy(engine.Config(model_dir=model_dir, strategy="multi_worker"))
  with strategy.scope():
    trainer = make_trainer(model_dir, {"strategy": "multi_worker"}, checkpoint_every=10)
  trainer.build(tf.TensorSpec([None, engine.data.NUM_FEATURES], tf.float32))
  print(f"started at step {trainer.step}", flush=True)
  initial = [v.numpy() for v in trainer.model.trainable_variables]
  results = trainer.train(dataset(), steps=steps)
  final = [v.numpy() for v in trainer.model.trainable_variables]
  examples = trainer.last_train_scalars["examples"] / STEPS
  np.savez(output, *initial, *final, loss=results["loss"], examples_per_step=examples,
           replicas=trainer.strategy.num_replicas_in_sync)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], *[int(arg) for arg in sys.argv[3:]])
