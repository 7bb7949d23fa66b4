"""Keras metrics that Keras lacks, kept as sums so replicas and batches add up.

Everything else (accuracy, top-k, AUC, F1, means) comes from `keras.metrics`.
"""

import keras
import tensorflow as tf


class ExpectedCalibrationError(keras.metrics.Metric):
  """ECE over `num_bins` equal-width confidence bins (Guo et al., 2017).

  State per bin: weighted count, sum of confidences, sum of correct. ECE =
  sum_b |correct_b - confidence_b| / total_weight. A mean of per-batch ECEs
  is not the ECE; these sums are. Bin b holds confidences in
  [b / num_bins, (b + 1) / num_bins); a confidence of exactly 1.0, frequent
  in float32, goes to the last bin instead of falling off the end.
  """

  def __init__(self, num_bins: int = 15, name: str = "ece", **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_bins = num_bins
    self.counts = self.add_variable(shape=(num_bins,), initializer="zeros", name="counts")
    self.confidences = self.add_variable(shape=(num_bins,), initializer="zeros",
                                         name="confidences")
    self.corrects = self.add_variable(shape=(num_bins,), initializer="zeros", name="corrects")

  def update_state(self, correct, confidence, sample_weight=None):
    """`correct` (bool or 0/1) and `confidence` in [0, 1], one per prediction."""
    confidence = tf.reshape(tf.cast(confidence, tf.float32), [-1])
    correct = tf.reshape(tf.cast(correct, tf.float32), [-1])
    weight = tf.ones_like(confidence) if sample_weight is None else tf.reshape(
        tf.cast(sample_weight, tf.float32), [-1])
    bins = tf.clip_by_value(tf.cast(tf.floor(confidence * self.num_bins), tf.int32),
                            0, self.num_bins - 1)
    def per_bin(values):
      return tf.math.unsorted_segment_sum(values * weight, bins, self.num_bins)
    self.counts.assign_add(per_bin(tf.ones_like(confidence)))
    self.confidences.assign_add(per_bin(confidence))
    self.corrects.assign_add(per_bin(correct))

  def result(self):
    gaps = tf.abs(self.corrects - self.confidences)
    return tf.math.divide_no_nan(tf.reduce_sum(gaps), tf.reduce_sum(self.counts))

  def reset_state(self):
    for variable in (self.counts, self.confidences, self.corrects):
      variable.assign(tf.zeros_like(variable))

  def get_config(self):
    return {**super().get_config(), "num_bins": self.num_bins}


class Perplexity(keras.metrics.Mean):
  """exp of the weighted mean negative log-likelihood per token."""

  def __init__(self, name: str = "perplexity", **kwargs):
    super().__init__(name=name, **kwargs)

  def result(self):
    return tf.exp(super().result())
