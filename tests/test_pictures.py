"""Evaluation pictures, read back with TensorBoard's event reader and checked against NumPy."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import engine
from engine import pictures
from heads import metrics as metrics_lib


@pytest.fixture(scope="module")
def eval_events(trained_demo):
  trainer, eval_data = trained_demo
  trainer.evaluate(eval_data)
  accumulator = event_accumulator.EventAccumulator(
      os.path.join(trainer.config.model_dir, "eval"), size_guidance={"tensors": 0})
  accumulator.Reload()
  latest = {tag: tf.make_ndarray(accumulator.Tensors(tag)[-1].tensor_proto)
            for tag in accumulator.Tags()["tensors"]}
  plugins = {tag: accumulator.SummaryMetadata(tag).plugin_data.plugin_name for tag in latest}
  features, labels = engine.data.synthetic_arrays("eval", 512)
  return latest, plugins, trainer.predict(features), labels


def test_each_classification_head_gets_every_picture_kind(eval_events):
  _, plugins, _, _ = eval_events
  for head, classes in (("digit", 10), ("parity", 2)):
    for label in range(classes):
      assert plugins[f"{head}/class_{label}/pr_curves"] == "pr_curves"
    assert plugins[f"{head}/confusion_matrix"] == "images"
    assert plugins[f"{head}/reliability_diagram"] == "images"
    assert plugins[f"{head}/logits"] == "histograms"
    assert plugins[f"{head}/top_probability"] == "histograms"
  assert not any(tag.startswith("box/") and kind != "scalars" for tag, kind in plugins.items())


def test_pr_curve_counts_match_numpy_at_threshold_one_half(eval_events):
  latest, _, predicted, labels = eval_events
  probabilities = predicted["digit"]["probabilities"]
  for label in (0, 7):
    data = latest[f"digit/class_{label}/pr_curves"]  # rows: tp, fp, tn, fn, precision, recall
    middle = (pictures.PR_THRESHOLDS - 1) // 2  # Threshold 0.5.
    positive, truth = probabilities[:, label] > 0.5, labels["digit"] == label
    np.testing.assert_allclose(data[:4, middle], [np.sum(positive & truth),
                                                  np.sum(positive & ~truth),
                                                  np.sum(~positive & ~truth),
                                                  np.sum(~positive & truth)], atol=1)
    assert data[0, 0] == np.sum(truth)  # Threshold 0: everything is predicted positive.


def test_confusion_image_shows_the_row_normalised_confusion_matrix(eval_events):
  latest, _, predicted, labels = eval_events
  image = tf.io.decode_png(latest["digit/confusion_matrix"][2]).numpy()
  counts = tf.math.confusion_matrix(labels["digit"], predicted["digit"]["classes"],
                                    num_classes=10).numpy()
  expected = pictures.confusion_image(counts)[0]
  np.testing.assert_allclose(image.astype(int), expected.astype(int), atol=1)  # Rounding.
  diagonal_cell = image[5, 5]  # Class 0 predicted as 0: mostly right, so dark.
  assert diagonal_cell[0] < 128


def test_histograms_count_every_evaluated_example(eval_events):
  latest, _, predicted, _ = eval_events
  top = latest["digit/top_probability"]
  assert top[:, 2].sum() == 512
  expected, _ = np.histogram(predicted["digit"]["probabilities"].max(axis=1), bins=20,
                             range=(0, 1))
  np.testing.assert_allclose(top[:, 2], expected, atol=1)  # Ties at bucket edges.
  assert latest["digit/logits"][:, 2].sum() == 512 * 10


def test_reliability_image_draws_accuracy_bars_and_the_gap():
  counts = np.array([0, 10, 10.0])
  confidences = np.array([0, 4, 9.0])  # Mean confidence 0.4 and 0.9.
  corrects = np.array([0, 4, 5.0])  # Accuracy 0.4 (calibrated) and 0.5 (over-confident).
  image = pictures.reliability_image(counts, confidences, corrects, size=90)[0]
  blue, red, white = (33, 102, 172), (214, 96, 77), (255, 255, 255)
  column = lambda b: image[:, b * 30 + 15]  # pylint: disable=unnecessary-lambda-assignment
  assert all(tuple(pixel) == white for pixel in column(0)[:70])  # Empty bin (the diagonal is lower).
  assert tuple(column(1)[89]) == blue and tuple(column(1)[30]) == white
  assert tuple(column(2)[80]) == blue and tuple(column(2)[20]) == red  # Gap up to 0.9.
  assert tuple(column(2)[3]) == white


def test_confusion_matrix_metric_matches_tensorflow_with_weights():
  labels, predictions = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 1, 1])
  weights = np.array([1.0, 2.0, 0.5, 0.0, 1.0])
  metric = metrics_lib.ConfusionMatrix(3)
  metric.update_state(labels[:2], predictions[:2], weights[:2])
  metric.update_state(labels[2:], predictions[2:], weights[2:])
  np.testing.assert_allclose(metric.result(), tf.math.confusion_matrix(
      labels, predictions, num_classes=3, weights=weights, dtype=tf.float32))


def test_bucket_counts_match_numpy_histogram_and_keep_outliers_in_edge_buckets():
  values = np.random.RandomState(0).normal(size=(50, 4)) * 3
  metric = metrics_lib.BucketCounts(-4.0, 4.0, 8)
  metric.update_state(values)
  expected, _ = np.histogram(np.clip(values, -4, 3.999), bins=8, range=(-4, 4))
  np.testing.assert_allclose(metric.result(), expected)
