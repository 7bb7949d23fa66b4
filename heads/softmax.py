"""Single-label classification: one softmax over `num_classes` classes."""

from typing import Optional, Sequence

import keras
import tensorflow as tf

from heads import base
from heads import guard
from heads import losses
from heads import calibration_metrics


def check_class_weights(name, class_weights, num_classes):
  """Validated class weights as a float32 constant, or None."""
  if class_weights is None:
    return None
  values = [float(w) for w in class_weights]
  if len(values) != num_classes or min(values) < 0:
    raise ValueError(
        f"Head '{name}': class_weights must be {num_classes} numbers >= 0; "
        f"received {list(class_weights)!r}.")
  return tf.constant(values, tf.float32)


def check_label_smoothing(name, label_smoothing):
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(
        f"Head '{name}': label_smoothing ({label_smoothing!r}) must be in [0, 1).")
  return float(label_smoothing)


def apply_class_weights(class_weights, labels, weights):
  """`weights * class_weights[y]`; for target distributions, their mean class weight.

  Labels are ids `[...]` or distributions `[..., C]`; ids outside [0, C)
  (padding, absent labels) are clipped, their weight being 0 already.
  """
  if class_weights is None:
    return weights
  if labels.dtype.is_floating:
    return weights * tf.reduce_sum(tf.cast(labels, tf.float32) * class_weights, axis=-1)
  ids = tf.clip_by_value(tf.cast(labels, tf.int32), 0, class_weights.shape[0] - 1)
  return weights * tf.gather(class_weights, ids)


def correct(labels, logits):
  """1.0 where the top logit is the label (class ids, or the target's top class), else 0.0."""
  ids = tf.argmax(labels, axis=-1) if labels.dtype.is_floating else labels
  return tf.cast(tf.equal(tf.argmax(logits, axis=-1), tf.cast(ids, tf.int64)), tf.float32)


class SoftmaxHead(guard.DistributionHead):
  """Single-label classification from logits, with a softmax at prediction.

  Labels are class ids `[batch]` in [0, num_classes), or target
  distributions `[batch, num_classes]` (one-hot or soft). The loss is the
  cross-entropy with `label_smoothing` (Keras's and torch's convention:
  `(1 - eps) * target + eps / num_classes`), weighted by the sample weight
  times `class_weights[y]`. For soft targets the class weight is the
  target-weighted mean of the class weights, and smoothing does not change
  an example's weight: the whole example is weighted by its target class,
  as Keras does.

  `temperature` divides the logits in `predict` and in the evaluation's
  metrics; it is a variable, saved with the model, so calibration can set it
  later, as it can set vector scaling (`calibration_scale`,
  `calibration_bias`: one per class). The loss uses raw logits.

  `class_names` (default: the class ids) label the evaluation's figures.

  Metrics: accuracy, top-k accuracy (when top_k < num_classes), nll,
  mean_confidence, and the calibration metrics of
  `heads.calibration_metrics.CalibrationErrors` (ece, mce, adaptive_ece,
  classwise_ece, brier), all of the temperature-scaled probabilities.
  """

  def __init__(self, name: str, num_classes: int, label_smoothing: float = 0.0,
               class_weights: Optional[Sequence[float]] = None, temperature: float = 1.0,
               top_k: int = 5, class_names: Optional[Sequence[str]] = None, **kwargs):
    super().__init__(name, **kwargs)
    guard.check_num_classes(name, num_classes)
    if not temperature > 0:
      raise ValueError(f"Head '{name}': temperature must be > 0; received {temperature!r}.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
      raise ValueError(f"Head '{name}': top_k must be an integer >= 1; received {top_k!r}.")
    self.num_classes = num_classes
    self.class_names = guard.check_class_names(name, class_names, num_classes)
    self.label_smoothing = check_label_smoothing(name, label_smoothing)
    self.class_weights = check_class_weights(name, class_weights, num_classes)
    self.logits_layer = keras.layers.Dense(num_classes, name="logits")
    self.temperature = self.add_weight(
        shape=(), initializer=keras.initializers.Constant(float(temperature)),
        trainable=False, name="temperature", dtype="float32")
    # Vector scaling (engine.calibration): a scale and a bias per class.
    self.calibration_scale, self.calibration_bias = base.add_calibration_map(self, num_classes)
    self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    self.top_k = (keras.metrics.SparseTopKCategoricalAccuracy(k=top_k, name=f"top{top_k}_accuracy")
                  if top_k < num_classes else None)
    self.nll = keras.metrics.Mean(name="nll")
    self.mean_confidence = keras.metrics.Mean(name="mean_confidence")
    self.calibration = calibration_metrics.CalibrationErrors(num_classes)

  @property
  def label_specs(self) -> tuple:
    ids = base.LabelSpec(shape=(), dtype=tf.int64, num_classes=self.num_classes)
    targets = base.LabelSpec(shape=(self.num_classes,), dtype=tf.float32, value_range=(0.0, 1.0))
    return (ids, targets)

  def call(self, features, training=False):
    del training  # No dropout of its own.
    return self.logits_layer(features)  # (B, C)

  def loss_weights(self, labels, sample_weight=None):
    return apply_class_weights(self.class_weights, labels,
                               self.example_weights(labels, sample_weight))  # (B,)

  def per_example_loss(self, labels, logits):
    return losses.softmax_cross_entropy(labels, logits, self.label_smoothing)  # (B,)

  def main_metric_values(self, labels, logits):
    return correct(labels, logits)  # (B,)

  def calibrated_logits(self, logits):
    """`logits / temperature * calibration_scale + calibration_bias`: the identity until
    calibration fits a temperature or vector scaling."""
    return (tf.cast(logits, tf.float32) / self.temperature * self.calibration_scale
            + self.calibration_bias)

  def predict(self, logits) -> dict:
    scaled = self.calibrated_logits(logits)
    return {"probabilities": tf.nn.softmax(scaled, axis=-1),
            "classes": tf.argmax(scaled, axis=-1)}

  def _update_metrics(self, labels, logits, sample_weight):
    scaled = self.calibrated_logits(logits)  # What predict serves.
    ids = tf.argmax(labels, axis=-1) if labels.dtype.is_floating else labels
    self.accuracy.update_state(ids, scaled, sample_weight)
    if self.top_k is not None:
      self.top_k.update_state(ids, scaled, sample_weight)
    self.nll.update_state(losses.softmax_cross_entropy(labels, scaled), sample_weight)
    probabilities = tf.nn.softmax(scaled, axis=-1)
    self.mean_confidence.update_state(tf.reduce_max(probabilities, axis=-1), sample_weight)
    self.calibration.update_state(ids, probabilities, sample_weight)
