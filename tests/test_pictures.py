"""Evaluation pictures, read back with TensorBoard's event reader and checked against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

import engine
import heads
from engine import figures
from engine import pictures
from heads import metrics as metrics_lib
from tests import events


class _Plugins(dict):
  """{tag: plugin name}, with `descriptions` {tag: summary description}."""


@pytest.fixture(scope="module")
def eval_events(trained_demo):
  trainer, eval_data = trained_demo
  trainer.evaluate(eval_data)
  accumulator = events.loaded(trainer.config.model_dir)
  latest = {tag: tf.make_ndarray(accumulator.Tensors(tag)[-1].tensor_proto)
            for tag in accumulator.Tags()["tensors"]}
  plugins = _Plugins({tag: accumulator.SummaryMetadata(tag).plugin_data.plugin_name
                      for tag in latest})
  plugins.descriptions = {tag: accumulator.SummaryMetadata(tag).summary_description
                          for tag in latest}
  features, labels = engine.data.synthetic_arrays("eval", 512)
  return latest, plugins, trainer.predict(features), labels


def test_each_classification_head_gets_every_picture_kind(eval_events):
  _, plugins, _, _ = eval_events
  descriptions = plugins.descriptions
  for head, classes in (("digit", 10), ("parity", 2)):
    for label in range(classes):
      assert plugins[f"{head}/class_{label}/pr_curves"] == "pr_curves"
    assert plugins[f"{head}/confusion_matrix"] == "images"
    assert descriptions[f"{head}/confusion_matrix"].startswith("Rows: the true class")
    assert "ECE is" in descriptions[f"{head}/reliability_diagram"]
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


def _texts(axes):
  return [text.get_text() for text in axes.texts]


def test_the_confusion_figure_is_a_labelled_png_of_the_row_normalised_counts(eval_events):
  latest, _, predicted, labels = eval_events
  width, height = (int(v) for v in latest["digit/confusion_matrix"][:2])
  assert width >= 480 and height >= 480
  image = tf.io.decode_png(latest["digit/confusion_matrix"][2]).numpy()
  assert image.shape == (height, width, 3) and image.std() > 10  # Drawn, not blank.
  counts = tf.math.confusion_matrix(labels["digit"], predicted["digit"]["classes"],
                                    num_classes=10).numpy()
  figure = figures.confusion_figure(counts, [f"d{i}" for i in range(10)], "digit")
  axes, colour_bar = figure.axes
  assert axes.get_xlabel() == "predicted class" and axes.get_ylabel() == "true class"
  assert [t.get_text() for t in axes.get_xticklabels()] == [f"d{i}" for i in range(10)]
  assert [t.get_text() for t in axes.get_yticklabels()] == [f"d{i}" for i in range(10)]
  assert colour_bar.get_ylabel() == "fraction of the true class"
  assert _texts(axes) == [str(c) for c in counts.ravel()]  # Row by row.
  np.testing.assert_allclose(axes.images[0].get_array(), counts / counts.sum(1, keepdims=True))
  assert "512 examples" in axes.get_title()


def test_with_many_classes_the_figure_lists_the_most_confused_pairs():
  counts = np.diag(np.full(40, 50.0))
  counts[3, 7], counts[12, 0], counts[39, 38] = 9.0, 30.0, 4.0
  names = [f"c{i}" for i in range(40)]
  axes, = figures.confusion_figure(counts, names, "big").axes
  assert [t.get_text() for t in axes.get_yticklabels()] == [
      "c12 \u2192 c0", "c3 \u2192 c7", "c39 \u2192 c38"]
  assert [patch.get_width() for patch in axes.patches] == [30.0, 9.0, 4.0]
  assert "3 most confused pairs of 40 classes" in axes.get_title()


def test_the_reliability_figure_draws_accuracy_the_gap_the_counts_and_the_ece():
  counts = np.zeros(15)
  confidences, corrects = np.zeros(15), np.zeros(15)
  counts[6], confidences[6], corrects[6] = 10, 4.3, 4.3  # Mean confidence 0.43: calibrated.
  counts[13], confidences[13], corrects[13] = 20, 18.0, 10.0  # 0.9 confident, 0.5 right.
  figure = figures.reliability_figure(counts, confidences, corrects, "digit", ece=0.2667)
  top, bottom = figure.axes
  bars = top.containers
  np.testing.assert_allclose([p.get_height() for p in bars[0]], [0.43, 0.5])  # Accuracy.
  np.testing.assert_allclose([p.get_height() for p in bars[1]], [0.0, 0.4], atol=1e-12)  # Gap.
  np.testing.assert_allclose([p.get_y() for p in bars[1]], [0.43, 0.5])
  assert sorted(t.get_text() for t in top.get_legend().get_texts()) == [
      "accuracy in the bin", "gap to the bin's mean confidence", "perfect calibration"]
  assert "ECE 0.2667" in top.get_title()
  assert top.get_ylabel() == "accuracy" and bottom.get_ylabel() == "examples"
  assert bottom.get_xlabel() == "confidence (top probability)"
  np.testing.assert_allclose([p.get_height() for p in bottom.patches], counts)
  assert _texts(bottom) == ["10", "20"]
  image = figures.to_image(figure)
  assert image.shape == (1, 640, 640, 3)


def test_a_sigmoid_head_gets_a_reliability_diagram_over_all_labels(make_trainer, monkeypatch,
                                                                   tmp_path):
  drawn = []
  draw = figures.reliability_figure
  monkeypatch.setattr(figures, "reliability_figure",
                      lambda *args, **kwargs: drawn.append((args, kwargs)) or draw(*args, **kwargs))
  rng = np.random.default_rng(0)
  features = rng.normal(size=(64, 8)).astype(np.float32)
  labels = (features[:, :3] > 0).astype(np.float32)
  head = heads.SigmoidHead("tags", 3, class_names=["a", "b", "c"])
  head_copy = heads.SigmoidHead("tags", 3, class_names=["a", "b", "c"])
  trainer = make_trainer(head_list=[head], eval_pictures=True)
  data = tf.data.Dataset.from_tensor_slices((features, {"tags": labels})).batch(32)
  trainer.train(data.repeat(), steps=5)
  trainer.evaluate(data)
  accumulator = events.loaded(trainer.config.model_dir)
  assert "tags/reliability_diagram" in accumulator.Tags()["tensors"]
  metadata = accumulator.SummaryMetadata("tags/reliability_diagram")
  assert "frequency of positives" in metadata.summary_description
  image = tf.make_ndarray(accumulator.Tensors("tags/reliability_diagram")[-1].tensor_proto)
  assert tf.io.decode_png(image[2]).shape == (640, 640, 3)
  # Drawn from the evaluation's sums (64 examples x 3 labels), read before they were reset.
  (counts, confidences, corrects, name, ece), options = drawn[-1]
  assert counts.sum() == 64 * 3 and corrects.sum() == labels.sum() and name == "tags"
  assert options == {"binary": True}
  assert ece == pytest.approx(events.final_scalars(trainer.config.model_dir)["tags/ece"],
                              rel=1e-5)
  # eval_pictures=False: the same evaluation writes its scalars and no picture.
  quiet = make_trainer(model_dir=tmp_path / "quiet", head_list=[head_copy], eval_pictures=False)
  quiet.train(data.repeat(), steps=5)
  quiet.evaluate(data)
  quiet_tags = events.loaded(quiet.config.model_dir).Tags()["tensors"]
  assert "tags/ece" in quiet_tags
  assert not [tag for tag in quiet_tags if tag.endswith("reliability_diagram")], quiet_tags


def test_histograms_count_every_evaluated_example(eval_events):
  latest, _, predicted, _ = eval_events
  top = latest["digit/top_probability"]
  assert top[:, 2].sum() == 512
  expected, _ = np.histogram(predicted["digit"]["probabilities"].max(axis=1), bins=20,
                             range=(0, 1))
  np.testing.assert_allclose(top[:, 2], expected, atol=1)  # Ties at bucket edges.
  assert latest["digit/logits"][:, 2].sum() == 512 * 10


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
