"""Classification heads with sparse probabilities: sparsemax and entmax."""

import keras
import tensorflow as tf

from heads import base
from heads import guard
from heads import calibration_metrics
from heads import normalisers
from heads import softmax


class _FenchelYoungHead(guard.DistributionHead):
  """Class ids `[batch]`; a sparse normaliser; its Fenchel-Young loss.

  Metrics: accuracy, support_size (mean number of classes with non-zero
  probability) and the calibration metrics (ece, mce, adaptive_ece,
  classwise_ece, brier). No NLL: an exact zero makes `log p` infinite.
  """

  def __init__(self, name: str, num_classes: int, alpha: float, class_names=None, **kwargs):
    super().__init__(name, **kwargs)
    guard.check_num_classes(name, num_classes)
    self.num_classes = num_classes
    self.class_names = guard.check_class_names(name, class_names, num_classes)
    self.alpha = alpha
    self.logits_layer = keras.layers.Dense(num_classes, name="logits")
    self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    self.support_size = keras.metrics.Mean(name="support_size")
    self.calibration = calibration_metrics.CalibrationErrors(num_classes)

  @property
  def label_specs(self) -> tuple:
    return (base.LabelSpec(shape=(), dtype=tf.int64, num_classes=self.num_classes),)

  def normalise(self, logits):
    raise NotImplementedError

  def call(self, features, training=False):
    del training
    return self.logits_layer(features)  # (B, C)

  def per_example_loss(self, labels, logits):
    return normalisers.fenchel_young_loss(labels, logits, self.normalise, self.alpha)  # (B,)

  def main_metric_values(self, labels, logits):
    return softmax.correct(labels, logits)  # The normalisers keep the order of the logits.

  def predict(self, logits) -> dict:
    return {"probabilities": self.normalise(logits),
            "classes": tf.argmax(tf.cast(logits, tf.float32), axis=-1)}

  def _update_metrics(self, labels, logits, sample_weight):
    probabilities = self.normalise(logits)
    self.accuracy.update_state(labels, probabilities, sample_weight)
    support = tf.reduce_sum(tf.cast(probabilities > 0, tf.float32), axis=-1)
    self.support_size.update_state(support, sample_weight)
    self.calibration.update_state(labels, probabilities, sample_weight)


class SparsemaxHead(_FenchelYoungHead):
  """Sparsemax probabilities and the sparsemax loss (Martins & Astudillo, 2016)."""

  def __init__(self, name: str, num_classes: int, **kwargs):
    super().__init__(name, num_classes, alpha=2.0, **kwargs)

  def normalise(self, logits):
    return normalisers.sparsemax(logits)


class EntmaxHead(_FenchelYoungHead):
  """alpha-entmax probabilities and their Fenchel-Young loss (Peters et al., 2019).

  alpha = 1.5 (the default) uses the exact sort-based algorithm; other
  alphas in (1, 2] use bisection. alpha = 2 is sparsemax; alpha -> 1 tends
  to softmax.
  """

  def __init__(self, name: str, num_classes: int, alpha: float = 1.5, **kwargs):
    if not 1.0 < alpha <= 2.0:
      raise ValueError(f"Head '{name}': alpha must be in (1, 2]; received {alpha!r}.")
    super().__init__(name, num_classes, alpha=float(alpha), **kwargs)

  def normalise(self, logits):
    if self.alpha == 1.5:
      return normalisers.entmax15(logits)
    return normalisers.entmax_bisect(logits, self.alpha)
