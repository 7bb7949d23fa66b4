"""TensorBoard summaries under `model_dir/train` and `model_dir/eval`.

Written from the host between compiled loops: `tf.summary` cannot run inside
an XLA-compiled function, and one write per loop costs nothing measurable.
"""

import contextlib
import os

import tensorflow as tf


class SummaryWriters:
  """One writer per mode ("train", "eval"), created on first use."""

  def __init__(self, model_dir: str):
    self._model_dir = model_dir
    self._writers = {}

  @contextlib.contextmanager
  def as_default(self, mode: str, step: int):
    """The writer of `mode` as the default one at `step`; flushed on exit."""
    if mode not in self._writers:
      self._writers[mode] = tf.summary.create_file_writer(os.path.join(self._model_dir, mode))
    with self._writers[mode].as_default(step=step):
      yield
    self._writers[mode].flush()

  def write_scalars(self, mode: str, scalars: dict, step: int):
    with self.as_default(mode, step):
      for tag, value in scalars.items():
        tf.summary.scalar(tag, value)

  def close(self):
    for writer in self._writers.values():
      writer.close()
    self._writers = {}
