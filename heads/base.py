"""The head protocol: what the engine may ask of every head.

A head is one named output of a multi-head model. It is a Keras layer so that
its variables are tracked, follow the mixed-precision policy and are exported
with the model. The engine calls, in this order:

1. `call(features, training)` on the trunk's output, once per step: logits.
2. `loss_and_metric_terms(labels, logits, sample_weight, training)`:
   `(loss_sum, weight_sum, metric_terms)` over the local batch. The engine
   divides the all-reduced sums, so the loss is a weighted mean over the
   *global* batch whatever the number of replicas. `metric_terms` is `{}`
   except for heads whose loss pass computes what their metrics need
   (`fused_metric_terms`); `loss_terms` is the same without it.
3. `update_metrics(labels, logits, sample_weight, metric_terms)`: accumulates
   the head's Keras metrics (sums and counts, so replicas and batches add up
   exactly).
4. `predict(logits)`: the only place the normaliser is applied.

Subclasses implement `label_spec`, `call`, `per_example_loss`, `predict` and
`_update_metrics`; the masking of absent labels lives here, once.
"""

import dataclasses
from typing import Optional
import warnings

import keras
import tensorflow as tf

from heads import weighting


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """What one example's label must look like.

  Used by the engine to validate batches before the compiled step (under XLA
  an out-of-range class id silently gives NaN) and to parse TFRecords.

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
  """Base class of all heads; see the module docstring for the protocol.

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

  # Names of the float32 scalar sums `loss_and_metric_terms` returns for the
  # metrics, when the loss pass computes them anyway (the fused large-vocabulary
  # head); the engine sums them over micro-batches and hands them back.
  fused_metric_terms = ()

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

  # --- implemented by subclasses -------------------------------------------

  @property
  def label_spec(self) -> LabelSpec:
    """The label form TFRecords are parsed with, and the first one accepted."""
    raise NotImplementedError

  @property
  def accepted_label_specs(self) -> tuple:
    """Every label form a batch may use; heads with several override this."""
    return (self.label_spec,)

  def label_spec_for(self, spec: tf.TensorSpec) -> Optional[LabelSpec]:
    """The accepted form that a batch's labels of this spec match, or None."""
    return next((form for form in self.accepted_label_specs if form.accepts(spec)), None)

  @property
  def per_token_weights(self) -> bool:
    """Whether sample weights may have one entry per label element ([batch, time])."""
    return False

  def per_example_loss(self, labels, logits):
    """Float32 loss per example, shape [batch], from logits (never probabilities)."""
    raise NotImplementedError

  def predict(self, logits) -> dict:
    """Serving outputs, e.g. {"probabilities", "classes"} or {"values"}."""
    raise NotImplementedError

  def _update_metrics(self, labels, logits, sample_weight):
    """Updates this head's Keras metrics; labels are already cleaned."""
    raise NotImplementedError

  # --- shared by all heads -------------------------------------------------

  def metric_results(self) -> dict:
    """{metric name: value} of the head's metrics, read when they are reported."""
    return {metric.name: metric.result() for metric in self.metrics}

  def example_weights(self, labels, sample_weight=None):
    """Float32 weight per example: the sample weight, 1 where none is given.

    A zero weight means "no label for this head here" (partially labelled
    multi-task data): such examples add nothing to the loss or the metrics.
    """
    if sample_weight is None:
      return tf.ones(tf.shape(labels)[:1], tf.float32)
    return tf.cast(sample_weight, tf.float32)

  def loss_weights(self, labels, sample_weight=None):
    """Float32 loss weight per example: `example_weights` times any class weight.

    Metrics use `example_weights` only: class weights change what the model
    optimises, not how its predictions are scored.
    """
    return self.example_weights(labels, sample_weight)

  def loss_terms(self, labels, logits, sample_weight=None):
    """Returns float32 `(sum_i w_i * loss_i, sum_i w_i)` over the local batch."""
    labels, logits = tf.convert_to_tensor(labels), tf.convert_to_tensor(logits)
    weights = self.loss_weights(labels, sample_weight)
    labels = self._clean_labels(labels, weights)
    losses = self.per_example_loss(labels, logits)
    # tf.where, not a product: a loss that is NaN where the label is absent
    # must not leak into the sum (0 * NaN is NaN).
    weighted = tf.where(weights > 0, losses * weights, tf.zeros_like(losses))
    return tf.reduce_sum(weighted), tf.reduce_sum(weights)

  def loss_and_metric_terms(self, labels, logits, sample_weight=None, training=False):
    """`(loss_sum, weight_sum, {name: sum for name in fused_metric_terms})`.

    `training`: the loss's gradients will be taken, so a fused head may
    compute them in the same pass.
    """
    del training  # Autodiff does it all for heads whose logits exist.
    return (*self.loss_terms(labels, logits, sample_weight), {})

  def update_metrics(self, labels, logits, sample_weight=None, metric_terms=None):
    """Accumulates the head's metrics over the examples that have a label.

    `metric_terms`: what `loss_and_metric_terms` returned for the same batch
    (used by heads with `fused_metric_terms`).
    """
    del metric_terms
    labels, logits = tf.convert_to_tensor(labels), tf.convert_to_tensor(logits)
    weights = self.example_weights(labels, sample_weight)
    self._update_metrics(self._clean_labels(labels, weights), logits, weights)

  def _clean_labels(self, labels, weights):
    """Replaces labels of weight-0 examples by zeros.

    Placeholders for absent labels (-1, NaN) would otherwise make the loss or
    its gradient NaN, even when multiplied by a zero weight.
    """
    present = weights > 0
    for _ in range(labels.shape.rank - present.shape.rank):
      present = present[..., tf.newaxis]
    return tf.where(present, labels, tf.zeros_like(labels))


_DOUBLE_SOFTMAX_POLICIES = ("warn", "raise", "ignore")


class DistributionHead(Head):
  """A head whose outputs are logits of a distribution over classes.

  Adds the double-softmax guard: a head fed probabilities instead of logits
  (its trunk ends in a softmax, or its logits are already normalised) learns
  badly without any error. `double_softmax` says what to do: "warn" (once
  per head), "raise" or "ignore". The engine checks one real batch before
  training; `loss_terms` also checks when run eagerly.
  """

  def __init__(self, name: str, *, double_softmax: str = "warn", **kwargs):
    super().__init__(name, **kwargs)
    if double_softmax not in _DOUBLE_SOFTMAX_POLICIES:
      raise ValueError(f"Head '{name}': double_softmax must be one of "
                       f"{_DOUBLE_SOFTMAX_POLICIES}; received {double_softmax!r}.")
    self.double_softmax = double_softmax
    self._warned = False

  def check_inputs(self, features=None, logits=None):
    """Eager check that neither the head's input nor its logits are probabilities."""
    for what, tensor in (("its input features", features), ("its logits", logits)):
      if tensor is not None and _looks_like_probabilities(tensor):
        self._report(
            f"Head '{self.name}': {what} look like probabilities (every row in [0, 1], "
            "summing to 1). Heads normalise logits themselves: remove the softmax "
            "from the trunk or head input, or pass double_softmax='ignore'.")
        return

  def loss_terms(self, labels, logits, sample_weight=None):
    if tf.executing_eagerly() and self.double_softmax != "ignore":
      self.check_inputs(logits=logits)
    return super().loss_terms(labels, logits, sample_weight)

  def _report(self, message):
    if self.double_softmax == "raise":
      raise ValueError(message)
    if self.double_softmax == "warn" and not self._warned:
      self._warned = True
      warnings.warn(message, UserWarning, stacklevel=3)


def _looks_like_probabilities(tensor) -> bool:
  tensor = tf.convert_to_tensor(tensor)
  if not tensor.dtype.is_floating or tensor.shape.rank < 2 or tensor.shape[-1] < 2:
    return False
  values = tf.cast(tensor, tf.float32)
  in_unit_interval = tf.reduce_all((values >= 0.0) & (values <= 1.0))
  sums_to_one = tf.reduce_all(tf.abs(tf.reduce_sum(values, axis=-1) - 1.0) < 1e-3)
  return bool(in_unit_interval and sums_to_one)
