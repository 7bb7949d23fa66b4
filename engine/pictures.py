"""The pictures of an evaluation, per classification head, for TensorBoard.

For every single-label classification head with at most `MAX_CLASSES`
classes: one precision-recall curve per class (TensorBoard's pr_curve
plugin), a confusion-matrix figure, and histograms of the logits and of the
top probability. For every head with calibration sums (softmax-family and
sigmoid heads): a reliability diagram. Their state is kept as sums in Keras
metrics, updated inside the compiled eval step, so the pictures cover every
evaluated example on every replica exactly; the figures are drawn from the
sums on the host (`engine.figures`). Each summary has a description that
says what it shows.
"""

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.pr_curve import summary as pr_curve_summary

from engine import figures
import heads as heads_lib
from heads import calibration_metrics
from heads import metrics as metrics_lib

MAX_CLASSES = 100  # Beyond this, per-class curves and a C x C image say little.
PR_THRESHOLDS = 201
LOGIT_RANGE = (-20.0, 20.0)  # Logits beyond it count in the edge buckets.


def has_pictures(head) -> bool:
  """Single-label classification heads with class-id labels and few classes."""
  return (isinstance(head, heads_lib.DistributionHead) and head.label_specs[0].shape == ()
          and getattr(head, "num_classes", MAX_CLASSES + 1) <= MAX_CLASSES)


def has_reliability_diagram(head) -> bool:
  return isinstance(getattr(head, "calibration", None), calibration_metrics.BinnedSums)


_PR_DESCRIPTION = ("Precision against recall of class {label} ({name}) as the threshold on its "
                   "probability goes from 1 to 0, over every evaluated example.")
_CONFUSION_DESCRIPTION = ("Rows: the true class; columns: the predicted (top) class. Colour: "
                          "the fraction of the row's examples; numbers: weighted counts.")
_RELIABILITY_DESCRIPTION = (
    "Examples binned by {what} (15 equal-width bins). Blue: {observed} in each bin; red "
    "(hatched): the gap to the bin's mean {mean}; dashed: perfect calibration. Below: the "
    "examples per bin. ECE is the count-weighted mean gap.")
_HISTOGRAM_DESCRIPTION = {
    "logits": "Every logit of the head over the evaluation (values beyond +-20 in the edge "
              "buckets).",
    "top_probability": "The top class's probability (the confidence) of every evaluated "
                       "example."}


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
          num_thresholds=PR_THRESHOLDS,
          description=_PR_DESCRIPTION.format(label=label, name=self.head.class_names[label]))
      tf.summary.experimental.write_raw_pb(summary.SerializeToString())
    figure = figures.confusion_figure(np.asarray(self.confusion.counts), self.head.class_names,
                                      name)
    tf.summary.image(f"{name}/confusion_matrix", figures.to_image(figure),
                     description=_CONFUSION_DESCRIPTION)
    _write_histogram(f"{name}/logits", self.logits)
    _write_histogram(f"{name}/top_probability", self.top_probability)


def write_reliability_diagram(head, sums):
  """The head's reliability diagram to the default writer; `sums`: [3, bins] counts,
  confidence sums and correct sums, as `EvalPictures.reliability_sums` read them."""
  counts, confidences, corrects = np.asarray(sums, np.float64)
  binary = isinstance(head.calibration, calibration_metrics.BinaryCalibration)
  ece = np.abs(corrects - confidences).sum() / max(counts.sum(), 1e-12)
  figure = figures.reliability_figure(counts, confidences, corrects, head.name, ece,
                                      binary=binary)
  description = _RELIABILITY_DESCRIPTION.format(
      what="each label's predicted probability" if binary else "top-label confidence",
      observed="the frequency of positives" if binary else "the accuracy",
      mean="probability" if binary else "confidence")
  tf.summary.image(f"{head.name}/reliability_diagram", figures.to_image(figure),
                   description=description)


class EvalPictures:
  """Pictures for every head that has them (see `has_pictures`, `has_reliability_diagram`)."""

  def __init__(self, heads):
    self._heads = {head.name: _HeadPictures(head) for head in heads if has_pictures(head)}
    self._reliability = [head for head in heads if has_reliability_diagram(head)]

  @property
  def metrics(self):
    return [metric for pictures in self._heads.values() for metric in pictures.metrics]

  def update(self, labels, logits, weights):
    for name, pictures in self._heads.items():
      pictures.update(labels[name], logits[name], weights.get(name))

  def reliability_sums(self) -> dict:
    """{head: [3, bins] tensor}: the calibration bins behind each reliability diagram."""
    return {head.name: tf.stack([tf.convert_to_tensor(v) for v in (
        head.calibration.counts, head.calibration.confidences, head.calibration.corrects)])
            for head in self._reliability}

  def write(self, reliability: dict):
    """Writes every picture; `reliability`: what `reliability_sums` read, as NumPy."""
    for pictures in self._heads.values():
      pictures.write()
    for head in self._reliability:
      write_reliability_diagram(head, reliability[head.name])


def _write_histogram(tag, buckets):
  """Writes bucket counts in the histogram plugin's format: rows (left, right, count)."""
  edges = np.linspace(buckets.low, buckets.high, buckets.num_buckets + 1)
  data = np.stack([edges[:-1], edges[1:], np.asarray(buckets.counts)], axis=1)
  description = _HISTOGRAM_DESCRIPTION[tag.rsplit("/", 1)[1]]
  tf.summary.write(tag, tf.constant(data, tf.float64),
                   metadata=histogram_metadata.create_summary_metadata(tag, description))
