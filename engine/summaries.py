"""TensorBoard summaries under `model_dir/train` and `model_dir/eval`, laid out for reading.

Written from the host between compiled loops: `tf.summary` cannot run inside
an XLA-compiled function. A loop's scalars go out as one `Summary` proto
(each value as `tf.summary.scalar` writes it: a float32 tensor with the
scalars plugin's metadata) in one `tf.summary.experimental.write_raw_pb`
op: one eager `tf.summary.scalar` per value cost about 15 ms a loop for the
benchmark's 25 scalars, and a traced function of them cost ~0.1-0.3 s of
tracing at the first loop.

Layout (`layout`): the run's overall measurements (total loss, learning
rate, steps per second, gradient norm; the loss scale and skip count under
mixed precision) go under `Overview/`: TensorBoard groups tags by their
first "/" component, sorts groups by character code (upper case before
lower case; a tag may not start with "_" or "!") and opens the first two, so
it comes first and open, above the lower-case head names. No scalar duplicates another: a head's `weighted_loss` only when
its weight is not a static 1, its `loss_weight` only when it changes, a
softmax head's `nll` only when it differs from its loss (label smoothing,
class weights or a temperature), no examples per second (steps per second
times the batch size); non-finite counters only when non-zero, or under
mixed_float16, where a skipped step is news.
"""

import contextlib
import os

import tensorflow as tf
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.scalar import metadata as scalar_metadata

from heads import softmax as softmax_lib
from heads import weighting as weighting_lib

OVERVIEW = "Overview"
_OVERVIEW_KEYS = ("loss", "learning_rate", "steps_per_second", "gradient_norm", "loss_scale",
                  "skipped_steps")
_DROPPED = ("examples", "examples_per_second")


def _nll_is_the_loss(head) -> bool:
  return (type(head) is softmax_lib.SoftmaxHead and head.label_smoothing == 0  # pylint: disable=unidiomatic-typecheck
          and head.class_weights is None and float(head.temperature.numpy()) == 1.0)


def _kept(key: str, value: float, heads: dict, precision: str) -> bool:
  if key in _DROPPED:
    return False
  counter = key == "skipped_steps" or key.endswith("/nonfinite_steps")
  if counter:
    return bool(value) or precision == "mixed_float16"
  head_name, _, metric = key.partition("/")
  head = heads.get(head_name)
  if head is None:
    return True
  static = isinstance(head.weighting, weighting_lib.Static)
  if metric == "weighted_loss":
    return not (static and head.weighting.value == 1.0)
  if metric == "loss_weight":
    return not static
  if metric == "nll":
    return not _nll_is_the_loss(head)
  return True


def layout(scalars: dict, heads, precision: str = "float32") -> dict:
  """{TensorBoard tag: value} for the run's scalars {name: value} (see the module doc)."""
  heads = {head.name: head for head in heads}
  return {(f"{OVERVIEW}/{key}" if key in _OVERVIEW_KEYS else key): value
          for key, value in scalars.items() if _kept(key, value, heads, precision)}


class SummaryWriters:
  """One writer per mode ("train", "eval"), created on first use; scalars laid out by
  `layout` for these heads and precision."""

  def __init__(self, model_dir: str, heads=(), precision: str = "float32"):
    self._model_dir = model_dir
    self._heads = list(heads)
    self._precision = precision
    self._writers = {}
    # As `tf.summary.scalar` makes it (no display name or description).
    self._scalar_metadata = scalar_metadata.create_summary_metadata(display_name=None,
                                                                    description=None)

  @contextlib.contextmanager
  def as_default(self, mode: str, step: int, flush: bool = True):
    """The writer of `mode` as the default one at `step`; flushed on exit if `flush`
    (each event reaches the file as it is written; a flush syncs it)."""
    if mode not in self._writers:
      self._writers[mode] = tf.summary.create_file_writer(os.path.join(self._model_dir, mode))
    with self._writers[mode].as_default(step=step):
      yield
    if flush:
      self._writers[mode].flush()

  def flush(self):
    for writer in self._writers.values():
      writer.flush()

  def write_scalars(self, mode: str, scalars: dict, step: int, flush: bool = True):
    """Writes `scalars` {name: value}, as `layout` names and filters them."""
    scalars = layout(scalars, self._heads, self._precision)
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, metadata=self._scalar_metadata,
                                  tensor=_float_scalar(value))
        for tag, value in scalars.items()])
    with self.as_default(mode, step, flush):
      tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)

  def write_hparams(self, hparams: dict, metric_names, run: str = "eval"):
    """Writes the run's settings to TensorBoard's HParams plugin, with its metrics.

    `hparams` maps names to values (bool, int, float or str; others are
    written as text, None as ""). The session goes into the run `run`
    ("eval", or "train" without evaluation) next to the metrics it lists
    (`metric_names`, as `evaluate` names them), so that `tensorboard
    --logdir <model_dir>` (or any parent) finds each metric in the session's
    own run and the plugin's table fills in.
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
    tags = layout(dict.fromkeys(metric_names, 0.0), self._heads, self._precision)
    with self.as_default(run, 0):
      hparams_api.hparams_config(
          hparams=[hparams_api.HParam(name) for name in values],
          metrics=[hparams_api.Metric(tag, display_name=f"{run}/{tag}") for tag in tags])
      hparams_api.hparams(values)

  def close(self):
    for writer in self._writers.values():
      writer.close()
    self._writers = {}


def _float_scalar(value) -> tensor_pb2.TensorProto:
  """A float32 scalar, as `tf.summary.scalar` writes it (built directly: the
  general `make_tensor_proto` took ~1.5 ms a loop for the benchmark's scalars)."""
  return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                float_val=[float(value)])
