"""Images: a small convolutional trunk on [H, W, C] images with attribute heads.

The data are generated (offline, deterministic): each image holds one to
three squares, each of a pure colour (red, green or blue), on dim noise.
Heads: `count` (softmax: how many squares, 3 classes), `colours` (sigmoid:
which of the three colours appear) and `position` (softmax: the quadrant of
the first square, 4 classes).
"""

import keras
import numpy as np
import tensorflow as tf

from engine import data
from engine.experiment import Experiment
import heads as heads_lib

_SPLIT_SEEDS = {"train": 11, "eval": 12, "calibration": 13}


def image_arrays(split: str, num_examples: int, image_size: int = 16, square: int = 4):
  """(images [N, S, S, 3] float32 in [0, 1], {"count", "colours", "position"})."""
  rng = np.random.RandomState(_SPLIT_SEEDS[split])
  images = rng.uniform(0.0, 0.1, size=(num_examples, image_size, image_size, 3))
  counts = rng.randint(1, 4, size=num_examples)
  colours = np.zeros((num_examples, 3), np.float32)
  position = np.zeros(num_examples, np.int64)
  half = image_size // 2
  for i in range(num_examples):
    for k in range(counts[i]):
      quadrant = rng.randint(4)
      top = (quadrant // 2) * half + rng.randint(half - square + 1)
      left = (quadrant % 2) * half + rng.randint(half - square + 1)
      colour = rng.randint(3)
      images[i, top:top + square, left:left + square, colour] = 1.0
      colours[i, colour] = 1.0
      if k == 0:
        position[i] = quadrant
  labels = {"count": (counts - 1).astype(np.int64), "colours": colours, "position": position}
  return images.astype(np.float32), labels


def conv_trunk(filters=(16, 32), width=64):
  """Conv-ReLU-pool blocks, global average pooling, then a Dense layer."""
  layers = []
  for f in filters:
    layers += [keras.layers.Conv2D(f, 3, padding="same", activation="relu"),
               keras.layers.MaxPooling2D()]
  return keras.Sequential([*layers, keras.layers.Flatten(),
                           keras.layers.Dense(width, activation="relu")], name="trunk")


def images(image_size=16, filters=(16, 32), width=64, num_train_examples=4096,
           num_eval_examples=1024):
  """Counting, colour and position heads on generated images of `image_size` pixels."""
  if not isinstance(image_size, int) or image_size < 8 or image_size % 2:
    raise ValueError(f"experiment_params image_size: expected an even integer >= 8; "
                     f"received {image_size!r}.")

  def batches(split, count, batch_size, seed=None):
    x, labels = image_arrays(split, count, image_size)
    if split == "train":
      return data.shuffled_batches((x, labels), batch_size, seed)
    dataset = tf.data.Dataset.from_tensor_slices((x, labels))
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  return Experiment(
      trunk=conv_trunk(tuple(filters), width),
      heads=[heads_lib.SoftmaxHead("count", 3), heads_lib.SigmoidHead("colours", 3),
             heads_lib.SoftmaxHead("position", 4)],
      train_data=lambda batch_size, seed: batches("train", num_train_examples, batch_size, seed),
      eval_data=lambda batch_size: batches("eval", num_eval_examples, batch_size),
      calibration_data=lambda batch_size: batches("calibration", num_eval_examples, batch_size))
