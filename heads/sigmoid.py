"""Multi-label classification: an independent sigmoid per class."""

from typing import Optional, Sequence

import keras
import tensorflow as tf

from heads import base
from heads import calibration_metrics
from heads import guard
from heads import losses


class SigmoidHead(base.Head):
  """Several classes can be true at once; targets `[batch, num_classes]` of 0/1.

  The loss per example is the mean over classes of the binary cross-entropy
  from logits (as keras.losses.BinaryCrossentropy computes it), with the
  positive term of class c multiplied by `pos_weight[c]` (torch's
  `binary_cross_entropy_with_logits(pos_weight=...)`). A class is predicted
  when its probability is >= `threshold`.

  `class_names` (default: the class ids) label the evaluation's figures.
  Platt scaling (`calibration_scale`, `calibration_bias`, per label; set by
  `engine.calibration`) applies in `predict` and the evaluation's metrics.

  Metrics: micro and macro F1 and ROC AUC (Keras's streaming metrics, at the
  threshold), the exact-match ratio (all classes right), and ece and brier
  over every (example, label) probability (`calibration_metrics.BinaryCalibration`).
  """

  main_metric = "exact_match"

  def __init__(self, name: str, num_classes: int,
               pos_weight: Optional[Sequence[float]] = None, threshold: float = 0.5,
               class_names: Optional[Sequence[str]] = None, **kwargs):
    super().__init__(name, **kwargs)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
      raise ValueError(
          f"Head '{name}': num_classes must be an integer >= 1; received {num_classes!r}.")
    if not 0.0 < threshold < 1.0:
      raise ValueError(f"Head '{name}': threshold must be in (0, 1); received {threshold!r}.")
    self.pos_weight = None
    if pos_weight is not None:
      values = [float(w) for w in pos_weight]
      if len(values) != num_classes or min(values) <= 0:
        raise ValueError(f"Head '{name}': pos_weight must be {num_classes} numbers > 0; "
                         f"received {list(pos_weight)!r}.")
      self.pos_weight = tf.constant(values, tf.float32)
    self.num_classes = num_classes
    self.class_names = guard.check_class_names(name, class_names, num_classes)
    self.threshold = float(threshold)
    self.logits_layer = keras.layers.Dense(num_classes, name="logits")
    # Platt scaling per label (engine.calibration): sigmoid(scale * z + bias).
    self.calibration_scale, self.calibration_bias = base.add_calibration_map(self, num_classes)
    self.micro_f1 = keras.metrics.F1Score(average="micro", threshold=threshold, name="micro_f1")
    self.macro_f1 = keras.metrics.F1Score(average="macro", threshold=threshold, name="macro_f1")
    # Keras makes F1Score's variables at its first update; results (and metric
    # names, for HParams) are asked for before any data: an empty update makes them.
    for f1 in (self.micro_f1, self.macro_f1):
      f1.update_state(tf.zeros([0, num_classes]), tf.zeros([0, num_classes]))
    self.roc_auc = keras.metrics.AUC(curve="ROC", from_logits=True, name="roc_auc")
    self.exact_match = keras.metrics.Mean(name="exact_match")
    self.calibration = calibration_metrics.BinaryCalibration()

  @property
  def label_specs(self) -> tuple:
    multi_hot = base.LabelSpec(shape=(self.num_classes,), dtype=tf.float32, value_range=(0.0, 1.0))
    multi_hot_ids = base.LabelSpec(shape=(self.num_classes,), dtype=tf.int64, num_classes=2)
    return (multi_hot, multi_hot_ids)

  def call(self, features, training=False):
    del training
    return self.logits_layer(features)  # (B, C)

  def per_example_loss(self, labels, logits):
    return losses.sigmoid_cross_entropy(labels, logits, self.pos_weight)  # (B,)

  def main_metric_values(self, labels, logits):
    return self._exact_matches(labels, tf.cast(logits, tf.float32))  # (B,)

  def _exact_matches(self, labels, logits):
    # probability >= threshold  <=>  logit >= logit(threshold).
    predicted = tf.cast(tf.sigmoid(logits) >= self.threshold, tf.float32)
    return tf.cast(tf.reduce_all(tf.equal(predicted, tf.cast(labels, tf.float32)), axis=-1),
                   tf.float32)

  def calibrated_logits(self, logits):
    """`calibration_scale * logits + calibration_bias`: the identity until Platt scaling."""
    return tf.cast(logits, tf.float32) * self.calibration_scale + self.calibration_bias

  def predict(self, logits) -> dict:
    probabilities = tf.sigmoid(self.calibrated_logits(logits))
    return {"probabilities": probabilities,
            "classes": tf.cast(probabilities >= self.threshold, tf.int64)}

  def _update_metrics(self, labels, logits, sample_weight):
    logits = self.calibrated_logits(logits)  # What predict serves.
    labels = tf.cast(labels, tf.float32)
    probabilities = tf.sigmoid(logits)
    self.micro_f1.update_state(labels, probabilities, sample_weight)
    self.macro_f1.update_state(labels, probabilities, sample_weight)
    token_weights = tf.broadcast_to(sample_weight[:, tf.newaxis], tf.shape(labels))
    self.roc_auc.update_state(labels, logits, token_weights)
    self.exact_match.update_state(self._exact_matches(labels, logits), sample_weight)
    self.calibration.update_state(labels, probabilities, sample_weight)
