"""The head contract: what every head gives the engine, documented once.

A head is one named output of a multi-head model. It is a Keras layer so that
its variables are tracked, follow the mixed-precision policy and are exported
with the model.

A new head implements six members (see `SoftmaxHead` for a complete one):

- `label_specs`: a tuple of `LabelSpec`, every label form a batch may use;
  the first is the form TFRecords are parsed with.
- `call(features, training)`: the logits.
- `per_example_loss(labels, logits)`: float32 loss per example (or token),
  from logits, with a stable normaliser.
- `main_metric_values(labels, logits)`: float32 value per example (or
  token) of the head's `main_metric`, the one metric tracked in training.
- `predict(logits)`: serving outputs; the only place the normaliser is applied.
- `_update_metrics(labels, logits, sample_weight)`: the full metric set.

The engine calls, per step:

1. `call` on the trunk's output: logits.
2. `loss_terms(labels, logits, sample_weight, training)` ->
   `(loss_sum, weight_sum, extras)`, float32 sums over the local batch. The
   engine all-reduces the sums and divides, so the loss is a weighted mean
   over the *global* batch whatever the number of replicas. `extras` holds
   more sums: `extras[main_metric]` and `extras["metric_weight"]` (the
   training metric), and whatever else the head's loss pass computes anyway.
3. `update_metrics(labels, logits, sample_weight, extras)`, at evaluation (and
   in training with `train_metrics="full"`): the head's Keras metrics, kept as
   sums and counts so replicas and batches add up exactly.
4. `predict(logits)`, at serving.

The masking of absent labels (weight 0) lives here, once: no subclass sees a
placeholder label.
"""

import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from heads import sums
from heads import weighting


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """What one example's label must look like.

  Used by the engine to check batches inside the compiled step (under XLA an
  out-of-range class id silently gives NaN) and to parse TFRecords.

  Attributes:
    shape: shape of one example's label, without the batch dimension.
    dtype: dtype the label is parsed as; any dtype of the same kind (integer
      or floating) is accepted in a batch.
    num_classes: for class ids, labels must lie in `[0, num_classes)`.
    value_range: for floats, labels must lie in `[low, high]`; floats must be
      finite in any case.
    ignore_value: a class id that marks padding (sequence heads); accepted
      anywhere and masked out of loss and metrics.
  """

  shape: tuple
  dtype: tf.DType
  num_classes: Optional[int] = None
  value_range: Optional[tuple] = None
  ignore_value: Optional[int] = None

  @property
  def tensor_spec(self) -> tf.TensorSpec:
    return tf.TensorSpec(self.shape, self.dtype)

  def accepts(self, spec: tf.TensorSpec) -> bool:
    """Whether a batch of labels of this spec (with batch dimension) fits."""
    kind_ok = spec.dtype.is_integer if self.dtype.is_integer else spec.dtype.is_floating
    return kind_ok and tf.TensorShape([None, *self.shape]).is_compatible_with(spec.shape)

  def describe(self) -> str:
    kind = "integer class ids" if self.dtype.is_integer else "floats"
    dims = ", ".join(["batch"] + ["time" if d is None else str(d) for d in self.shape])
    text = f"{kind} of shape [{dims}]"
    if self.num_classes is not None:
      text += f" in [0, {self.num_classes})"
    if self.ignore_value is not None:
      text += f" or {self.ignore_value} (ignored)"
    if self.value_range is not None:
      text += f" in [{self.value_range[0]:g}, {self.value_range[1]:g}]"
    return text


class Head(keras.layers.Layer):
  """Base class of all heads; the module docstring is the contract.

  Args:
    name: unique name; the key of this head in labels, sample weights,
      metrics and summaries. Must not contain "/".
    weight: the head's loss weight: a number >= 0, or a `heads.weighting`
      object (a schedule, learned uncertainty, GradNorm, DWA).
    input: when the trunk returns a dict, the key of the feature this head
      reads; None when the trunk returns a single tensor.
  """

  # "regression" or "classification": the likelihood behind the loss, which
  # learned uncertainty weighting needs.
  task = "classification"
  # The metric tracked in training (from `main_metric_values`), reported as
  # "<head>/<main_metric>" like the evaluation's metric of the same name.
  main_metric = "accuracy"

  def __init__(self, name: str, *, weight=1.0,
               input: Optional[str] = None, **kwargs):  # pylint: disable=redefined-builtin
    if not isinstance(name, str) or not name or "/" in name:
      raise ValueError(
          f"Head name must be a non-empty string without '/'; received {name!r}.")
    if not isinstance(weight, weighting.Weighting):
      try:
        weight = weighting.Static(weight)
      except ValueError:
        raise ValueError(f"Head '{name}': weight must be a number >= 0 or a heads.weighting "
                         f"object; received {weight!r}.") from None
    super().__init__(name=name, **kwargs)
    self.weighting = weight
    weight.bind(self)
    self.input_key = input

  # --- implemented by each head ----------------------------------------------

  @property
  def label_specs(self) -> tuple:
    """Every label form a batch may use; the first is the one TFRecords are parsed with."""
    raise NotImplementedError

  @property
  def per_token_weights(self) -> bool:
    """Whether sample weights may have one entry per label element ([batch, time])."""
    return False

  def per_example_loss(self, labels, logits):
    """Float32 loss per example, shape [batch], from logits (never probabilities)."""
    raise NotImplementedError

  def main_metric_values(self, labels, logits):
    """Float32 value of `main_metric` per example (or token); labels are cleaned."""
    raise NotImplementedError

  def predict(self, logits) -> dict:
    """Serving outputs, e.g. {"probabilities", "classes"} or {"values"}."""
    raise NotImplementedError

  def _update_metrics(self, labels, logits, sample_weight):
    """Updates this head's Keras metrics; labels are already cleaned."""
    raise NotImplementedError

  # --- what the engine calls -------------------------------------------------

  def loss_terms(self, labels, logits, sample_weight=None, training=False):
    """`(sum_i w_i * loss_i, sum_i w_i, extras)`, float32, over the local batch.

    `w_i` is `loss_weights` (sample weight times any class weight). `extras`
    holds `main_metric` and "metric_weight": the weighted sum of the main
    metric and the sum of the metric weights (`example_weights`: class
    weights change what is optimised, not how predictions are scored).
    `training`: the loss's gradients will be taken (heads whose loss pass
    computes its own gradients use it).
    """
    del training  # Autodiff does it all for heads whose logits exist.
    labels, logits = tf.convert_to_tensor(labels), tf.convert_to_tensor(logits)
    metric_weights = self.example_weights(labels, sample_weight)
    weights = self.loss_weights(labels, sample_weight)
    labels = self._clean_labels(labels, metric_weights)
    return (sums.weighted_sum(self.per_example_loss(labels, logits), weights),
            sums.total(weights),
            {self.main_metric: sums.weighted_sum(self.main_metric_values(labels, logits),
                                                 metric_weights),
             "metric_weight": sums.total(metric_weights)})

  def update_metrics(self, labels, logits, sample_weight=None, extras=None):
    """Accumulates the head's metrics over the examples that have a label.

    `extras`: what `loss_terms` returned for the same batch (heads whose
    metrics come from their loss pass read it).
    """
    del extras
    labels, logits = tf.convert_to_tensor(labels), tf.convert_to_tensor(logits)
    weights = self.example_weights(labels, sample_weight)
    self._update_metrics(self._clean_labels(labels, weights), logits, weights)

  def metric_results(self) -> dict:
    """{metric name: value} of the head's metrics, read when they are reported.

    A metric whose result is a dict (the calibration metrics) gives its entries.
    """
    return metric_results(self.metrics)

  def example_weights(self, labels, sample_weight=None):
    """Float32 weight per example: the sample weight, 1 where none is given.

    A zero weight means "no label for this head here" (partially labelled
    multi-task data): such examples add nothing to the loss or the metrics.
    """
    if sample_weight is None:
      batch = labels.shape[0]  # Static: a constant, not shape ops, in the traced step.
      return tf.ones([batch] if batch is not None else tf.shape(labels)[:1], tf.float32)
    return tf.cast(sample_weight, tf.float32)

  def loss_weights(self, labels, sample_weight=None):
    """Float32 loss weight per example: `example_weights` times any class weight."""
    return self.example_weights(labels, sample_weight)

  def _clean_labels(self, labels, weights):
    """Replaces labels of weight-0 examples by zeros.

    Placeholders for absent labels (-1, NaN) would otherwise make the loss or
    its gradient NaN, even when multiplied by a zero weight.
    """
    present = weights > 0
    for _ in range(labels.shape.rank - present.shape.rank):
      present = present[..., tf.newaxis]
    return tf.where(present, labels, tf.zeros_like(labels))


def add_calibration_map(head, size: int):
  """(scale, bias): float32 [size] variables of `head`, the identity map (1, 0) until post-hoc
  calibration (engine.calibration) sets them; saved with the head, applied by `predict`."""
  return tuple(head.add_weight(shape=(size,), initializer=initializer, trainable=False,
                               name=f"calibration_{name}", dtype="float32")
               for name, initializer in (("scale", "ones"), ("bias", "zeros")))


def metric_results(metrics) -> dict:
  """{name: value} of Keras metrics, a dict result's entries under their own names."""
  results = {}
  for metric in metrics:
    value = metric.result()
    results.update(value if isinstance(value, dict) else {metric.name: value})
  return results


def matching_label_spec(head: Head, spec: tf.TensorSpec) -> Optional[LabelSpec]:
  """The form in `head.label_specs` that a batch's labels of this spec match, or None."""
  return next((form for form in head.label_specs if form.accepts(spec)), None)
