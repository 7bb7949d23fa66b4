"""Input pipelines: the built-in synthetic multi-task data; TFRecords (`engine.records`).

The synthetic set has a known structure, so tests can state what a trained
model must reach. Each example has 32 standard-normal features and:
- `digit`: 10 classes, the argmax of a fixed random linear map of the
  features (learnable to ~100%; chance is ~10%);
- `parity`: 2 classes, `digit % 2` (a non-linear function of the features;
  chance 50%);
- `box`: 4 values, `tanh` of a fixed random linear map plus Gaussian noise of
  standard deviation 0.1 (the best reachable MSE is 0.01).
The maps come from `TASK_SEED` and are the same for every split; the
examples of each split come from its own seed.
"""

import random

import numpy as np
import tensorflow as tf

from engine import records

# TFRecord shards from arrays, and batches from TFRecord shards (see engine.records).
write_tfrecords = records.write_tfrecords
tfrecord = records.dataset

NUM_FEATURES = 32
TASK_SEED = 1234
BOX_NOISE = 0.1
_SPLIT_SEEDS = {"train": 1, "eval": 2, "test": 3, "calibration": 4}
# The heads the synthetic data labels, as heads.parse_heads text.
DEMO_HEADS = "digit:softmax:10,parity:softmax:2:0.5,box:regression:4:0.25"


def synthetic_arrays(split: str, num_examples: int):
  """Returns (features [N, 32] float32, {"digit", "parity", "box"}) as NumPy."""
  if split not in _SPLIT_SEEDS:
    raise ValueError(f"split must be one of {sorted(_SPLIT_SEEDS)}; received {split!r}.")
  task = np.random.RandomState(TASK_SEED)
  digit_map = task.normal(size=(NUM_FEATURES, 10))
  box_map = task.normal(size=(NUM_FEATURES, 4)) / np.sqrt(NUM_FEATURES)
  rng = np.random.RandomState(_SPLIT_SEEDS[split])
  x = rng.normal(size=(num_examples, NUM_FEATURES))
  digit = np.argmax(x @ digit_map, axis=1)
  box = np.tanh(x @ box_map) + BOX_NOISE * rng.normal(size=(num_examples, 4))
  labels = {"digit": digit.astype(np.int64),
            "parity": (digit % 2).astype(np.int64),
            "box": box.astype(np.float32)}
  return x.astype(np.float32), labels


def synthetic(split: str, batch_size: int, num_examples: int = 8192,
              repeat: bool = None, shuffle_seed: int = 0) -> tf.data.Dataset:
  """The synthetic set as batches of (features, labels).

  The training split is shuffled (deterministically, from `shuffle_seed`) and
  repeated; other splits are read once, in order. Batches are all full, so
  XLA compiles one shape.
  """
  features, labels = synthetic_arrays(split, num_examples)
  repeat = (split == "train") if repeat is None else repeat
  if repeat:
    return shuffled_batches((features, labels), batch_size, shuffle_seed)
  dataset = tf.data.Dataset.from_tensor_slices((features, labels))
  return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def shuffled_indices(count: int, seed) -> tf.data.Dataset:
  """0..count-1 in a new random order each epoch, forever.

  Each epoch's order is a stateless permutation of (seed, epoch), so the
  input position a checkpoint keeps is an epoch number and an index (about
  14 KB), not a shuffle buffer of examples (29 MB for the demo's 65,536
  examples, 15 MB even as a buffer of indices).
  """
  if seed is None:
    seed = random.SystemRandom().randrange(2**31)

  def epoch(number):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(count, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), number]))
    return tf.data.Dataset.from_tensor_slices(order)
  return tf.data.Dataset.range(2**62).flat_map(epoch)


def shuffled_batches(arrays, batch_size: int, seed) -> tf.data.Dataset:
  """Full batches of `arrays` (a nest of equal-length arrays), shuffled each epoch, forever."""
  tensors = tf.nest.map_structure(tf.constant, arrays)
  count = int(tf.nest.flatten(tensors)[0].shape[0])
  return shuffled_indices(count, seed).batch(batch_size, drop_remainder=True).map(
      lambda i: tf.nest.map_structure(lambda t: tf.gather(t, i), tensors)).prefetch(
          tf.data.AUTOTUNE)
