"""Per-timestep classification: a softmax at every position of a sequence."""

from typing import Optional, Sequence

import keras
import tensorflow as tf

from heads import base
from heads import guard
from heads import losses
from heads import calibration_metrics
from heads import metrics as metrics_lib
from heads import softmax


def check_ignore_label(name, ignore_label, num_classes):
  """The padding label must not be a class."""
  if not isinstance(ignore_label, int) or 0 <= ignore_label < num_classes:
    raise ValueError(
        f"Head '{name}': ignore_label must be an integer outside [0, {num_classes}); "
        f"received {ignore_label!r}.")


def token_weights(labels, ignore_label, sample_weight=None):
  """Per label element: the sample weight (per example or per element), 0 on padding."""
  weights = tf.cast(tf.not_equal(labels, tf.cast(ignore_label, labels.dtype)), tf.float32)
  if sample_weight is not None:
    sample_weight = tf.cast(sample_weight, tf.float32)
    for _ in range(weights.shape.rank - sample_weight.shape.rank):
      sample_weight = sample_weight[..., tf.newaxis]
    weights *= sample_weight
  return weights


class SequenceSoftmaxHead(guard.DistributionHead):
  """Logits `[batch, time, classes]` from features `[batch, time, width]`.

  Labels are class ids `[batch, time]`. Padding is masked out by the label
  `ignore_label` or by a zero sample weight; sample weights may be given per
  sequence `[batch]` or per token `[batch, time]`. The loss is the weighted
  mean over the valid tokens of the *global* batch (the engine sums tokens
  over replicas before dividing), with `label_smoothing` and `class_weights`
  as in `SoftmaxHead`.

  Metrics: token accuracy ("accuracy"), perplexity (exp of the mean token
  negative log-likelihood) and the calibration metrics (ece, mce,
  adaptive_ece, classwise_ece, brier), all over valid tokens.
  """

  def __init__(self, name: str, num_classes: int, ignore_label: int = -1,
               label_smoothing: float = 0.0,
               class_weights: Optional[Sequence[float]] = None,
               class_names: Optional[Sequence[str]] = None, **kwargs):
    super().__init__(name, **kwargs)
    guard.check_num_classes(name, num_classes)
    check_ignore_label(name, ignore_label, num_classes)
    self.num_classes = num_classes
    self.class_names = guard.check_class_names(name, class_names, num_classes)
    self.ignore_label = ignore_label
    self.label_smoothing = softmax.check_label_smoothing(name, label_smoothing)
    self.class_weights = softmax.check_class_weights(name, class_weights, num_classes)
    self.logits_layer = keras.layers.Dense(num_classes, name="logits")
    self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    self.perplexity = metrics_lib.Perplexity(name="perplexity")
    self.calibration = calibration_metrics.CalibrationErrors(num_classes)

  @property
  def label_specs(self) -> tuple:
    return (base.LabelSpec(shape=(None,), dtype=tf.int64, num_classes=self.num_classes,
                           ignore_value=self.ignore_label),)

  @property
  def per_token_weights(self) -> bool:
    return True

  def call(self, features, training=False):
    del training
    return self.logits_layer(features)  # (B, T, C)

  def example_weights(self, labels, sample_weight=None):
    return token_weights(labels, self.ignore_label, sample_weight)  # (B, T)

  def loss_weights(self, labels, sample_weight=None):
    return softmax.apply_class_weights(self.class_weights, labels,
                                       self.example_weights(labels, sample_weight))

  def per_example_loss(self, labels, logits):
    return losses.softmax_cross_entropy(labels, logits, self.label_smoothing,
                                        ignore_value=self.ignore_label)  # (B, T)

  def main_metric_values(self, labels, logits):
    return softmax.correct(labels, logits)  # (B, T)

  def predict(self, logits) -> dict:
    logits = tf.cast(logits, tf.float32)
    return {"probabilities": tf.nn.softmax(logits, axis=-1),
            "classes": tf.argmax(logits, axis=-1)}

  def _update_metrics(self, labels, logits, sample_weight):
    logits = tf.cast(logits, tf.float32)
    self.accuracy.update_state(labels, logits, sample_weight)
    self.perplexity.update_state(losses.softmax_cross_entropy(labels, logits), sample_weight)
    self.calibration.update_state(labels, tf.nn.softmax(logits, axis=-1), sample_weight)
