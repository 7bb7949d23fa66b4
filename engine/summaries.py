"""TensorBoard scalars under `model_dir/train` and `model_dir/eval`.

Written from the host between compiled loops: `tf.summary` cannot run inside
an XLA-compiled function, and one write per loop costs nothing measurable.
"""

import os

import tensorflow as tf


class SummaryWriters:
  """One writer per mode ("train", "eval"), created on first use."""

  def __init__(self, model_dir: str):
    self._model_dir = model_dir
    self._writers = {}

  def write_scalars(self, mode: str, scalars: dict, step: int):
    if mode not in self._writers:
      self._writers[mode] = tf.summary.create_file_writer(os.path.join(self._model_dir, mode))
    with self._writers[mode].as_default(step=step):
      for tag, value in scalars.items():
        tf.summary.scalar(tag, value)
    self._writers[mode].flush()

  def close(self):
    for writer in self._writers.values():
      writer.close()
    self._writers = {}
