"""Heads against Keras losses and metrics, NumPy and closed forms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import heads


def _random_logits(rng, batch=32, classes=7, scale=3.0):
  return (scale * rng.normal(size=(batch, classes))).astype(np.float32)


def _built(head, width=5):
  head(tf.zeros([1, width]))
  return head


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_softmax_loss_matches_keras_sparse_categorical_crossentropy(scale):
  rng = np.random.default_rng(0)
  logits = _random_logits(rng, scale=scale)
  labels = rng.integers(0, 7, size=32)
  weights = rng.uniform(0.0, 2.0, size=32).astype(np.float32)
  head = heads.SoftmaxHead("digit", num_classes=7)
  loss_sum, weight_sum, _ = head.loss_terms(labels, logits, weights)
  keras_sum = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(
      labels, logits, sample_weight=weights)
  np.testing.assert_allclose(loss_sum, keras_sum, rtol=1e-6)
  np.testing.assert_allclose(weight_sum, weights.sum(), rtol=1e-6)
  unweighted_sum, count, _ = head.loss_terms(labels, logits)
  keras_mean = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
  np.testing.assert_allclose(unweighted_sum / count, keras_mean, rtol=1e-6)


def test_softmax_loss_and_gradient_stay_finite_for_logits_of_1e4():
  logits = tf.constant([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3], [0.0, 0.0, 1e4]], tf.float32)
  labels = tf.constant([1, 1, 2])
  head = heads.SoftmaxHead("digit", num_classes=3)
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss_sum, _, _ = head.loss_terms(labels, logits)
  gradient = tape.gradient(loss_sum, logits)
  z = logits.numpy().astype(np.float64)
  lse = np.log(np.sum(np.exp(z - z.max(1, keepdims=True)), 1)) + z.max(1)
  expected = np.sum(lse - z[np.arange(3), labels.numpy()])  # 2e4 + 5e3 + 0
  np.testing.assert_allclose(loss_sum, expected, rtol=1e-6)
  assert np.all(np.isfinite(gradient.numpy()))
  keras_sum = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(
      labels, logits)
  np.testing.assert_allclose(loss_sum, keras_sum, rtol=1e-6)


def test_softmax_loss_is_float32_from_half_precision_logits():
  rng = np.random.default_rng(1)
  logits = _random_logits(rng)
  labels = rng.integers(0, 7, size=32)
  head = heads.SoftmaxHead("digit", num_classes=7)
  for dtype in (tf.float16, tf.bfloat16):
    loss_sum, weight_sum, _ = head.loss_terms(labels, tf.cast(logits, dtype))
    assert loss_sum.dtype == tf.float32 and weight_sum.dtype == tf.float32
    reference, _, _ = head.loss_terms(labels, tf.cast(tf.cast(logits, dtype), tf.float32))
    np.testing.assert_allclose(loss_sum, reference, rtol=1e-6)


def test_absent_labels_add_nothing_even_with_invalid_placeholders():
  rng = np.random.default_rng(2)
  logits = tf.constant(_random_logits(rng, batch=6, classes=3))
  labels = tf.constant([0, -1, 2, 99, 1, -1])
  weights = tf.constant([1.0, 0.0, 1.0, 0.0, 2.0, 0.0])
  head = heads.SoftmaxHead("digit", num_classes=3)
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss_sum, weight_sum, _ = head.loss_terms(labels, logits, weights)
  gradient = tape.gradient(loss_sum, logits)
  present = [0, 2, 4]
  expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(
      tf.gather(labels, present), tf.gather(logits, present),
      sample_weight=tf.gather(weights, present))
  np.testing.assert_allclose(loss_sum, expected, rtol=1e-6)
  assert float(weight_sum) == 4.0
  assert np.all(np.isfinite(gradient.numpy()))
  np.testing.assert_array_equal(tf.gather(gradient, [1, 3, 5]), np.zeros((3, 3)))


def test_softmax_predict_applies_softmax_once():
  logits = tf.constant([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
  outputs = heads.SoftmaxHead("digit", num_classes=3).predict(logits)
  z = logits.numpy()
  expected = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-6)
  np.testing.assert_array_equal(outputs["classes"], [0, 2])


def test_softmax_accuracy_metric_is_weighted_and_skips_absent_labels():
  head = _built(heads.SoftmaxHead("digit", num_classes=3))
  logits = tf.constant([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])
  head.update_metrics(tf.constant([0, 0, 2, -1]), logits, tf.constant([1.0, 2.0, 1.0, 0.0]))
  # Correct: examples 0 (w 1) and 2 (w 1) of total weight 4; example 3 absent.
  np.testing.assert_allclose(head.accuracy.result(), 2.0 / 4.0)
  assert [metric.name for metric in head.metrics] == [
      "accuracy", "nll", "mean_confidence", "calibration"]  # top-5 needs more than 3 classes.
  assert set(head.metric_results()) == {"accuracy", "nll", "mean_confidence", "ece", "mce",
                                        "adaptive_ece", "classwise_ece", "brier"}


@pytest.mark.parametrize("loss,reference", [
    ("mse", keras.losses.MeanSquaredError(reduction="sum")),
    ("mae", keras.losses.MeanAbsoluteError(reduction="sum")),
    ("huber", keras.losses.Huber(delta=0.7, reduction="sum")),
])
def test_regression_losses_match_keras(loss, reference):
  rng = np.random.default_rng(3)
  predictions = rng.normal(size=(20, 4)).astype(np.float32) * 2
  targets = rng.normal(size=(20, 4)).astype(np.float32)
  weights = rng.uniform(0, 1, size=20).astype(np.float32)
  head = heads.RegressionHead("box", units=4, loss=loss, delta=0.7)
  loss_sum, weight_sum, _ = head.loss_terms(targets, predictions, weights)
  np.testing.assert_allclose(loss_sum, reference(targets, predictions, sample_weight=weights),
                             rtol=1e-6)
  np.testing.assert_allclose(weight_sum, weights.sum(), rtol=1e-6)


def test_regression_metrics_match_numpy_and_ignore_nan_placeholders():
  head = _built(heads.RegressionHead("box", units=2))
  predictions = np.array([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]], np.float32)
  targets = np.array([[0.0, 2.0], [1.0, 3.0], [np.nan, np.nan]], np.float32)
  weights = np.array([1.0, 3.0, 0.0], np.float32)
  head.update_metrics(targets, predictions, weights)
  errors = np.abs(predictions[:2] - targets[:2])
  mae = np.sum(errors.mean(1) * weights[:2]) / weights[:2].sum()
  rmse = np.sqrt(np.sum((errors**2).mean(1) * weights[:2]) / weights[:2].sum())
  np.testing.assert_allclose(head.mae.result(), mae, rtol=1e-6)
  np.testing.assert_allclose(head.rmse.result(), rmse, rtol=1e-6)
  loss_sum, _, _ = head.loss_terms(targets, predictions, weights)
  assert np.isfinite(loss_sum.numpy())


def test_label_specs_describe_what_each_head_reads():
  softmax_spec = heads.SoftmaxHead("digit", num_classes=10).label_specs[0]
  assert softmax_spec.tensor_spec == tf.TensorSpec((), tf.int64)
  assert softmax_spec.num_classes == 10
  assert softmax_spec.accepts(tf.TensorSpec([None], tf.int32))
  assert not softmax_spec.accepts(tf.TensorSpec([None], tf.float32))
  regression_spec = heads.RegressionHead("box", units=4).label_specs[0]
  assert regression_spec.tensor_spec == tf.TensorSpec((4,), tf.float32)
  assert regression_spec.num_classes is None


@pytest.mark.parametrize("make,message", [
    (lambda: heads.SoftmaxHead("digit", num_classes=0), r"'digit'.*num_classes.*received 0"),
    (lambda: heads.SoftmaxHead("digit", num_classes=3, weight=-1.0), r"'digit'.*weight.*-1"),
    (lambda: heads.SoftmaxHead("a/b", num_classes=3), r"name.*'a/b'"),
    (lambda: heads.RegressionHead("box", units=2, loss="l3"), r"'box'.*loss.*'l3'"),
    (lambda: heads.RegressionHead("box", units=0), r"'box'.*units.*received 0"),
])
def test_bad_head_arguments_name_the_head_and_value(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_parse_heads_knows_every_fixed_shape_kind():
  built = heads.parse_heads("a:sigmoid:5,b:sparsemax:3,c:entmax:4:2")
  assert [(type(h).__name__, h.num_classes, h.weighting.value) for h in built] == [
      ("SigmoidHead", 5, 1.0), ("SparsemaxHead", 3, 1.0), ("EntmaxHead", 4, 2.0)]


def test_parse_heads_builds_named_weighted_heads():
  built = heads.parse_heads("digit:softmax:10,parity:softmax:2:0.5, box:regression:4:0.25")
  assert [(h.name, type(h).__name__, h.weighting.value) for h in built] == [
      ("digit", "SoftmaxHead", 1.0), ("parity", "SoftmaxHead", 0.5),
      ("box", "RegressionHead", 0.25)]
  assert built[0].num_classes == 10 and built[2].units == 4


@pytest.mark.parametrize("text,message", [
    ("digit:softmax", r"--heads.*name:kind:size.*'digit:softmax'"),
    ("digit:tree:3", r"--heads.*'digit'.*kind 'tree'"),
    ("digit:softmax:ten", r"--heads.*'digit'.*integer size"),
    ("", r"--heads.*at least one head"),
])
def test_parse_heads_errors_name_the_flag(text, message):
  with pytest.raises(ValueError, match=message):
    heads.parse_heads(text)
