"""Keras metrics that Keras lacks, kept as sums so replicas and batches add up.

Calibration metrics are in `heads.calibration_metrics`; everything else (accuracy, top-k, AUC, F1, means) comes from `keras.metrics`.
"""

import keras
import tensorflow as tf


class Perplexity(keras.metrics.Mean):
  """exp of the weighted mean negative log-likelihood per token."""

  def __init__(self, name: str = "perplexity", **kwargs):
    super().__init__(name=name, **kwargs)

  def result(self):
    return tf.exp(super().result())


class ConfusionMatrix(keras.metrics.Metric):
  """Weighted counts `[true class, predicted class]`, summed over batches and replicas."""

  def __init__(self, num_classes: int, name: str = "confusion_matrix", **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_classes = num_classes
    self.counts = self.add_variable(shape=(num_classes, num_classes), initializer="zeros",
                                    name="counts")

  def update_state(self, labels, predictions, sample_weight=None):
    """`labels` and `predictions` are class ids; weight-0 examples count nothing."""
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int32), [-1])
    weight = tf.ones_like(labels, tf.float32) if sample_weight is None else tf.reshape(
        tf.cast(sample_weight, tf.float32), [-1])
    cells = labels * self.num_classes + predictions
    counts = tf.math.unsorted_segment_sum(weight, cells, self.num_classes ** 2)
    self.counts.assign_add(tf.reshape(counts, [self.num_classes, self.num_classes]))

  def result(self):
    return self.counts

  def reset_state(self):
    self.counts.assign(tf.zeros_like(self.counts))

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes}


class BucketCounts(keras.metrics.Metric):
  """Weighted counts of values in `num_buckets` equal buckets over [low, high].

  Values outside the range count in the first or last bucket. Kept as sums
  (unlike a sample), so a histogram covers every evaluated example exactly.
  """

  def __init__(self, low: float, high: float, num_buckets: int, name: str = "buckets",
               **kwargs):
    super().__init__(name=name, **kwargs)
    self.low, self.high, self.num_buckets = float(low), float(high), num_buckets
    self.counts = self.add_variable(shape=(num_buckets,), initializer="zeros", name="counts")

  def update_state(self, values, sample_weight=None):
    """`sample_weight` is per example (the first dimension of `values`), or None."""
    values = tf.cast(values, tf.float32)
    weight = tf.ones_like(values) if sample_weight is None else tf.broadcast_to(
        tf.reshape(tf.cast(sample_weight, tf.float32),
                   [-1] + [1] * (values.shape.rank - 1)), tf.shape(values))
    position = (values - self.low) / (self.high - self.low) * self.num_buckets
    buckets = tf.clip_by_value(tf.cast(tf.floor(position), tf.int32), 0, self.num_buckets - 1)
    self.counts.assign_add(tf.math.unsorted_segment_sum(
        tf.reshape(weight, [-1]), tf.reshape(buckets, [-1]), self.num_buckets))

  def result(self):
    return self.counts

  def reset_state(self):
    self.counts.assign(tf.zeros_like(self.counts))

  def get_config(self):
    return {**super().get_config(), "low": self.low, "high": self.high,
            "num_buckets": self.num_buckets}
