"""TensorBoard summaries under `model_dir/train` and `model_dir/eval`.

Written from the host between compiled loops: `tf.summary` cannot run inside
an XLA-compiled function. A loop's scalars are written by one call of a
traced function: one eager `tf.summary.scalar` per value cost about 15 ms a
loop for the benchmark's 25 scalars.
"""

import contextlib
import os

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api


class SummaryWriters:
  """One writer per mode ("train", "eval"), created on first use."""

  def __init__(self, model_dir: str):
    self._model_dir = model_dir
    self._writers = {}
    self._scalar_writers = {}  # (mode, tags) -> traced function writing them.

  @contextlib.contextmanager
  def as_default(self, mode: str, step: int):
    """The writer of `mode` as the default one at `step`; flushed on exit."""
    if mode not in self._writers:
      self._writers[mode] = tf.summary.create_file_writer(os.path.join(self._model_dir, mode))
    with self._writers[mode].as_default(step=step):
      yield
    self._writers[mode].flush()

  def write_scalars(self, mode: str, scalars: dict, step: int):
    tags = tuple(scalars)
    values = tf.constant([float(value) for value in scalars.values()], tf.float32)
    with self.as_default(mode, step):
      if (mode, tags) not in self._scalar_writers:
        def write(values, step):
          for index, tag in enumerate(tags):
            tf.summary.scalar(tag, values[index], step=step)
        self._scalar_writers[mode, tags] = tf.function(write)
      self._scalar_writers[mode, tags](values, tf.constant(step, tf.int64))

  def close(self):
    for writer in self._writers.values():
      writer.close()
    self._writers = {}
    self._scalar_writers = {}


def write_hparams(model_dir: str, hparams: dict, metric_names) -> None:
  """Writes the run's settings to TensorBoard's HParams plugin, with its eval metrics.

  `hparams` maps names to values (bool, int, float or str; others are
  written as text, None as ""). The plugin shows them in one row per run
  next to the latest value of each metric of `model_dir/eval`.
  """
  def plain(value):
    if value is None:
      return ""
    if isinstance(value, (bool, int, float, str)):
      return value
    if isinstance(value, (list, tuple)):
      return ",".join(str(item) for item in value)
    return str(value)
  values = {name: plain(value) for name, value in sorted(hparams.items())}
  writer = tf.summary.create_file_writer(model_dir)
  with writer.as_default():
    hparams_api.hparams_config(
        hparams=[hparams_api.HParam(name) for name in values],
        metrics=[hparams_api.Metric(name, group="eval", display_name=f"eval/{name}")
                 for name in metric_names])
    hparams_api.hparams(values)
  writer.close()
