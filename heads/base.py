"""The head protocol: what the engine may ask of every head.

A head is one named output of a multi-head model. It is a Keras layer so that
its variables are tracked, follow the mixed-precision policy and are exported
with the model. The engine calls, in this order:

1. `call(features, training)` on the trunk's output, once per step: logits.
2. `loss_terms(labels, logits, sample_weight)`: `(loss_sum, weight_sum)` over
   the local batch. The engine divides the all-reduced sums, so the loss is a
   weighted mean over the *global* batch whatever the number of replicas.
3. `update_metrics(labels, logits, sample_weight)`: accumulates the head's
   Keras metrics (sums and counts, so replicas and batches add up exactly).
4. `predict(logits)`: the only place the normaliser is applied.

Subclasses implement `label_spec`, `call`, `per_example_loss`, `predict` and
`_update_metrics`; the masking of absent labels lives here, once.
"""

import dataclasses
from typing import Optional

import keras
import tensorflow as tf


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
  """

  shape: tuple
  dtype: tf.DType
  num_classes: Optional[int] = None

  @property
  def tensor_spec(self) -> tf.TensorSpec:
    return tf.TensorSpec(self.shape, self.dtype)

  def accepts_dtype(self, dtype: tf.DType) -> bool:
    if self.dtype.is_integer:
      return dtype.is_integer
    return dtype.is_floating

  def describe(self) -> str:
    kind = "integer class ids" if self.dtype.is_integer else "floats"
    text = f"{kind} of per-example shape {list(self.shape)}"
    if self.num_classes is not None:
      text += f" in [0, {self.num_classes})"
    return text


class Head(keras.layers.Layer):
  """Base class of all heads; see the module docstring for the protocol.

  Args:
    name: unique name; the key of this head in labels, sample weights,
      metrics and summaries. Must not contain "/".
    weight: the head's loss weight in the total loss (>= 0).
    input: when the trunk returns a dict, the key of the feature this head
      reads; None when the trunk returns a single tensor.
  """

  def __init__(self, name: str, *, weight: float = 1.0,
               input: Optional[str] = None, **kwargs):  # pylint: disable=redefined-builtin
    if not isinstance(name, str) or not name or "/" in name:
      raise ValueError(
          f"Head name must be a non-empty string without '/'; received {name!r}.")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
      raise ValueError(
          f"Head '{name}': weight must be a number >= 0; received {weight!r}.")
    super().__init__(name=name, **kwargs)
    self.weight = float(weight)
    self.input_key = input

  # --- implemented by subclasses -------------------------------------------

  @property
  def label_spec(self) -> LabelSpec:
    raise NotImplementedError

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

  def example_weights(self, labels, sample_weight=None):
    """Float32 weight per example: the sample weight, 1 where none is given.

    A zero weight means "no label for this head here" (partially labelled
    multi-task data): such examples add nothing to the loss or the metrics.
    """
    if sample_weight is None:
      return tf.ones(tf.shape(labels)[:1], tf.float32)
    return tf.cast(sample_weight, tf.float32)

  def loss_terms(self, labels, logits, sample_weight=None):
    """Returns float32 `(sum_i w_i * loss_i, sum_i w_i)` over the local batch."""
    weights = self.example_weights(labels, sample_weight)
    labels = self._clean_labels(labels, weights)
    losses = self.per_example_loss(labels, logits)
    # tf.where, not a product: a loss that is NaN where the label is absent
    # must not leak into the sum (0 * NaN is NaN).
    weighted = tf.where(weights > 0, losses * weights, tf.zeros_like(losses))
    return tf.reduce_sum(weighted), tf.reduce_sum(weights)

  def update_metrics(self, labels, logits, sample_weight=None):
    """Accumulates the head's metrics over the examples that have a label."""
    weights = self.example_weights(labels, sample_weight)
    self._update_metrics(self._clean_labels(labels, weights), logits, weights)

  def _clean_labels(self, labels, weights):
    """Replaces labels of weight-0 examples by zeros.

    Placeholders for absent labels (-1, NaN) would otherwise make the loss or
    its gradient NaN, even when multiplied by a zero weight.
    """
    present = tf.reshape(weights > 0, [-1] + [1] * len(self.label_spec.shape))
    return tf.where(present, labels, tf.zeros_like(labels))
