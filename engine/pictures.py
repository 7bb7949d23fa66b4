"""The pictures of an evaluation, per classification head, for TensorBoard.

For every single-label classification head with at most `MAX_CLASSES`
classes: one precision-recall curve per class (TensorBoard's pr_curve
plugin), a confusion-matrix image, a reliability-diagram image, and
histograms of the logits and of the top probability. Their state is kept as
sums in Keras metrics, updated inside the compiled eval step, so the
pictures cover every evaluated example on every replica exactly. The images
are drawn with NumPy (no plotting library is a dependency).
"""

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.pr_curve import summary as pr_curve_summary

import heads as heads_lib
from heads import metrics as metrics_lib

MAX_CLASSES = 100  # Beyond this, per-class curves and a C x C image say little.
PR_THRESHOLDS = 201
LOGIT_RANGE = (-20.0, 20.0)  # Logits beyond it count in the edge buckets.


def has_pictures(head) -> bool:
  """Single-label classification heads with class-id labels and few classes."""
  return (isinstance(head, heads_lib.DistributionHead) and head.label_specs[0].shape == ()
          and getattr(head, "num_classes", MAX_CLASSES + 1) <= MAX_CLASSES)


class _HeadPictures:
  """The evaluation state behind one head's pictures."""

  def __init__(self, head):
    self.head = head
    classes = head.num_classes
    self.pr_counts = keras.metrics.AUC(num_thresholds=PR_THRESHOLDS, curve="PR",
                                       multi_label=True, num_labels=classes,
                                       name=f"{head.name}_pr_counts")
    self.confusion = metrics_lib.ConfusionMatrix(classes, name=f"{head.name}_confusion")
    self.logits = metrics_lib.BucketCounts(*LOGIT_RANGE, 80, name=f"{head.name}_logits")
    self.top_probability = metrics_lib.BucketCounts(0.0, 1.0, 20,
                                                    name=f"{head.name}_top_probability")

  @property
  def metrics(self):
    return [self.pr_counts, self.confusion, self.logits, self.top_probability]

  def update(self, labels, logits, sample_weight):
    head = self.head
    labels = tf.convert_to_tensor(labels)
    weights = head.example_weights(labels, sample_weight)
    ids = tf.argmax(labels, axis=-1) if labels.dtype.is_floating else labels
    ids = tf.where(weights > 0, tf.cast(ids, tf.int32), 0)  # Absent labels: weight 0.
    probabilities = head.predict(logits)["probabilities"]
    one_hot = tf.one_hot(ids, head.num_classes)
    self.pr_counts.update_state(one_hot, probabilities, weights)
    self.confusion.update_state(ids, tf.argmax(probabilities, axis=-1), weights)
    self.logits.update_state(logits, weights)
    self.top_probability.update_state(tf.reduce_max(probabilities, axis=-1), weights)

  def write(self):
    """Writes the summaries to the default writer, at its step."""
    name = self.head.name
    counts = [np.asarray(v) for v in (self.pr_counts.true_positives,
                                      self.pr_counts.false_positives,
                                      self.pr_counts.true_negatives,
                                      self.pr_counts.false_negatives)]
    for label in range(self.head.num_classes):
      tp, fp, tn, fn = (c[:, label] for c in counts)
      summary = pr_curve_summary.raw_data_pb(
          f"{name}/class_{label}", tp, fp, tn, fn,
          precision=tp / np.maximum(tp + fp, 1e-7), recall=tp / np.maximum(tp + fn, 1e-7),
          num_thresholds=PR_THRESHOLDS)
      tf.summary.experimental.write_raw_pb(summary.SerializeToString())
    tf.summary.image(f"{name}/confusion_matrix",
                     confusion_image(np.asarray(self.confusion.counts)))
    ece = getattr(self.head, "ece", None)
    if isinstance(ece, metrics_lib.ExpectedCalibrationError):
      tf.summary.image(f"{name}/reliability_diagram", reliability_image(
          np.asarray(ece.counts), np.asarray(ece.confidences), np.asarray(ece.corrects)))
    _write_histogram(f"{name}/logits", self.logits)
    _write_histogram(f"{name}/top_probability", self.top_probability)


class EvalPictures:
  """Pictures for every head that has them (see `has_pictures`)."""

  def __init__(self, heads):
    self._heads = {head.name: _HeadPictures(head) for head in heads if has_pictures(head)}

  @property
  def metrics(self):
    return [metric for pictures in self._heads.values() for metric in pictures.metrics]

  def update(self, labels, logits, weights):
    for name, pictures in self._heads.items():
      pictures.update(labels[name], logits[name], weights.get(name))

  def write(self):
    for pictures in self._heads.values():
      pictures.write()


def _write_histogram(tag, buckets):
  """Writes bucket counts in the histogram plugin's format: rows (left, right, count)."""
  edges = np.linspace(buckets.low, buckets.high, buckets.num_buckets + 1)
  data = np.stack([edges[:-1], edges[1:], np.asarray(buckets.counts)], axis=1)
  tf.summary.write(tag, tf.constant(data, tf.float64),
                   metadata=histogram_metadata.create_summary_metadata(tag, ""))


def confusion_image(counts, size=240):
  """[1, H, W, 3] uint8: rows (true class) normalised, from white (0) to dark blue (1)."""
  rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
  cell = max(1, size // len(counts))
  intensity = np.kron(rows, np.ones((cell, cell)))[..., np.newaxis]
  blue = np.array([8, 48, 107], np.float64)
  return np.round(255 - intensity * (255 - blue)).astype(np.uint8)[np.newaxis]


def reliability_image(counts, confidences, corrects, size=240):
  """[1, H, W, 3] uint8 reliability diagram over the ECE's confidence bins.

  Blue bars: accuracy per bin; red: the gap up or down to the bin's mean
  confidence; grey: the diagonal of perfect calibration. Empty bins stay white.
  """
  image = np.full((size, size, 3), 255, np.uint8)
  diagonal = np.arange(size)
  image[size - 1 - diagonal, diagonal] = (160, 160, 160)
  width = size // len(counts)
  for b, count in enumerate(counts):
    if count <= 0:
      continue
    accuracy, confidence = corrects[b] / count, confidences[b] / count
    columns = slice(b * width + 1, (b + 1) * width - 1)
    top = size - int(round(accuracy * (size - 1))) - 1
    image[top:, columns] = (33, 102, 172)
    low, high = sorted((accuracy, confidence))
    image[size - 1 - int(round(high * (size - 1))):size - int(round(low * (size - 1))),
          columns] = (214, 96, 77)
  return image[np.newaxis]
