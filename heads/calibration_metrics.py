"""Calibration metrics as sums, so replicas and batches add up exactly.

`CalibrationErrors` (one probability vector per example, softmax-family
heads) keeps, per example weight w:
- 15 equal-width bins of the top-label confidence: weighted count, sum of
  confidences, sum of correct. `ece` = sum_b |correct_b - confidence_b| / W
  (Guo et al. 2017); `mce` = max over non-empty bins of the per-bin gap.
- `FINE_BINS` equal-width bins of the same confidence, merged at read time
  into 15 bins of equal mass for `adaptive_ece` (Nguyen & O'Connor 2015;
  Nixon et al. 2019): a fine bin goes to equal-mass bin floor(15 * r / W),
  r the weight of the examples below it. Examples closer than 1 / FINE_BINS
  stay in one bin (ties are never split, as a sort would split them).
- 15 equal-width bins of each class's probability: `classwise_ece` (Kull et
  al. 2019) = mean over classes of sum_b |freq_bk - p_bk| / W.
- `brier` = sum_i w_i sum_k (p_ik - y_ik)^2 / W.

`BinaryCalibration` (sigmoid heads) treats every (example, label) pair as
one probability of a positive: `ece` over 15 bins of p, with the frequency
of positives as each bin's "accuracy", and `brier` = mean of (p - y)^2.
A confidence of exactly 1.0 goes to the last bin.
"""

import keras
import tensorflow as tf

NUM_BINS = 15
FINE_BINS = 2048
MAX_CLASSWISE_CLASSES = 1000  # [classes, bins] sums per head; beyond, no classwise_ece.


def _bins(values, num_bins):
  return tf.clip_by_value(tf.cast(tf.floor(values * num_bins), tf.int32), 0, num_bins - 1)


class BinnedSums(keras.metrics.Metric):
  """Shared state: equal-width bins of a confidence, their count, confidence and
  correct sums (what the reliability diagram draws), and the Brier sum."""

  def __init__(self, num_bins, name, **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_bins = num_bins
    zeros = {"initializer": "zeros"}
    self.counts = self.add_variable(shape=(num_bins,), name="counts", **zeros)
    self.confidences = self.add_variable(shape=(num_bins,), name="confidences", **zeros)
    self.corrects = self.add_variable(shape=(num_bins,), name="corrects", **zeros)
    self.brier_sum = self.add_variable(shape=(), name="brier_sum", **zeros)
    self.weight_sum = self.add_variable(shape=(), name="weight_sum", **zeros)

  def _add_bins(self, confidence, correct, weight):
    bins = _bins(confidence, self.num_bins)
    for variable, value in ((self.counts, weight), (self.confidences, confidence * weight),
                            (self.corrects, correct * weight)):
      variable.assign_add(tf.math.unsorted_segment_sum(value, bins, self.num_bins))

  def ece(self):
    return tf.math.divide_no_nan(tf.reduce_sum(tf.abs(self.corrects - self.confidences)),
                                 tf.reduce_sum(self.counts))

  def brier(self):
    return tf.math.divide_no_nan(self.brier_sum, self.weight_sum)

  def reset_state(self):
    for variable in self.variables:
      variable.assign(tf.zeros_like(variable))

  def get_config(self):
    return {**super().get_config(), "num_bins": self.num_bins}


class CalibrationErrors(BinnedSums):
  """ece, mce, adaptive_ece, classwise_ece (up to MAX_CLASSWISE_CLASSES classes) and
  brier of a probability vector per example; `result()` is a dict of them."""

  def __init__(self, num_classes: int, num_bins: int = NUM_BINS, fine_bins: int = FINE_BINS,
               name: str = "calibration", **kwargs):
    super().__init__(num_bins, name, **kwargs)
    self.num_classes = num_classes
    self.fine_bins = fine_bins
    self.classwise = num_classes <= MAX_CLASSWISE_CLASSES
    zeros = {"initializer": "zeros"}
    self.fine = self.add_variable(shape=(3, fine_bins), name="fine", **zeros)
    if self.classwise:
      self.per_class = self.add_variable(shape=(3, num_classes, num_bins), name="per_class",
                                         **zeros)

  def update_state(self, labels, probabilities, sample_weight=None):
    """`labels`: class ids [N]; `probabilities`: [N, C]; `sample_weight`: [N] or None."""
    p = tf.reshape(tf.cast(probabilities, tf.float32), [-1, self.num_classes])
    ids = tf.reshape(tf.cast(labels, tf.int32), [-1])
    w = (tf.ones_like(p[:, 0]) if sample_weight is None
         else tf.reshape(tf.cast(sample_weight, tf.float32), [-1]))
    one_hot = tf.one_hot(ids, self.num_classes)
    confidence = tf.reduce_max(p, axis=-1)
    correct = tf.cast(tf.equal(tf.argmax(p, axis=-1, output_type=tf.int32), ids), tf.float32)
    self._add_bins(confidence, correct, w)
    fine = _bins(confidence, self.fine_bins)
    self.fine.assign_add(tf.stack([
        tf.math.unsorted_segment_sum(value * w, fine, self.fine_bins)
        for value in (tf.ones_like(confidence), confidence, correct)]))
    self.brier_sum.assign_add(tf.reduce_sum(w * tf.reduce_sum(tf.square(p - one_hot), -1)))
    self.weight_sum.assign_add(tf.reduce_sum(w))
    if self.classwise:
      cells = tf.reshape(tf.range(self.num_classes) * self.num_bins + _bins(p, self.num_bins),
                         [-1])
      size = self.num_classes * self.num_bins
      w_cells = tf.broadcast_to(w[:, tf.newaxis], tf.shape(p))
      self.per_class.assign_add(tf.stack([
          tf.reshape(tf.math.unsorted_segment_sum(tf.reshape(value, [-1]), cells, size),
                     [self.num_classes, self.num_bins])
          for value in (w_cells, p * w_cells, one_hot * w_cells)]))

  def result(self):
    total = tf.reduce_sum(self.counts)
    gaps = tf.math.divide_no_nan(tf.abs(self.corrects - self.confidences), self.counts)
    results = {"ece": self.ece(), "mce": tf.reduce_max(tf.where(self.counts > 0, gaps, 0.0)),
               "adaptive_ece": self._adaptive(total), "brier": self.brier()}
    if self.classwise:
      counts, probabilities, hits = tf.unstack(self.per_class)
      del counts
      per_class = tf.reduce_sum(tf.abs(hits - probabilities), axis=-1)
      results["classwise_ece"] = tf.math.divide_no_nan(tf.reduce_mean(per_class), total)
    return results

  def _adaptive(self, total):
    counts, confidences, corrects = tf.unstack(self.fine)
    below = tf.cumsum(counts, exclusive=True)
    groups = tf.clip_by_value(
        tf.cast(tf.floor(tf.math.divide_no_nan(below * self.num_bins, total)), tf.int32),
        0, self.num_bins - 1)
    gaps = tf.abs(tf.math.unsorted_segment_sum(corrects - confidences, groups, self.num_bins))
    return tf.math.divide_no_nan(tf.reduce_sum(gaps), total)

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes,
            "fine_bins": self.fine_bins}


class BinaryCalibration(BinnedSums):
  """ece and brier over every (example, label) probability of a multi-label head."""

  def __init__(self, num_bins: int = NUM_BINS, name: str = "calibration", **kwargs):
    super().__init__(num_bins, name, **kwargs)

  def update_state(self, labels, probabilities, sample_weight=None):
    """`labels` 0/1 and `probabilities` [N, L]; `sample_weight` [N] (per example) or None."""
    p = tf.cast(probabilities, tf.float32)
    y = tf.cast(labels, tf.float32)
    w = tf.ones_like(p) if sample_weight is None else tf.broadcast_to(
        tf.reshape(tf.cast(sample_weight, tf.float32), [-1, 1]), tf.shape(p))
    p, y, w = (tf.reshape(value, [-1]) for value in (p, y, w))
    self._add_bins(p, y, w)
    self.brier_sum.assign_add(tf.reduce_sum(w * tf.square(p - y)))
    self.weight_sum.assign_add(tf.reduce_sum(w))

  def result(self):
    return {"ece": self.ece(), "brier": self.brier()}
