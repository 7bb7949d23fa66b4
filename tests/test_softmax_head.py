"""SoftmaxHead, complete: smoothing, class weights, soft targets, temperature, metrics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import heads


def _data(seed=0, batch=64, classes=6, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=(batch, classes))).astype(np.float32)
  labels = rng.integers(0, classes, size=batch)
  weights = rng.uniform(0.0, 2.0, size=batch).astype(np.float32)
  return logits, labels, weights


def _built(head, width=4):
  head(tf.zeros([1, width]))
  return head


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_label_smoothing_on_class_ids_matches_keras_on_one_hot(eps):
  logits, labels, weights = _data()
  head = heads.SoftmaxHead("digit", num_classes=6, label_smoothing=eps)
  loss_sum, weight_sum, _ = head.loss_terms(labels, logits, weights)
  reference = keras.losses.CategoricalCrossentropy(
      from_logits=True, label_smoothing=eps, reduction="sum")(
          np.eye(6)[labels], logits, sample_weight=weights)
  np.testing.assert_allclose(loss_sum, reference, rtol=1e-6)
  np.testing.assert_allclose(weight_sum, weights.sum(), rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_soft_targets_match_keras_categorical_crossentropy(eps):
  logits, _, weights = _data(seed=1)
  rng = np.random.default_rng(1)
  targets = rng.dirichlet(np.ones(6), size=64).astype(np.float32)
  head = heads.SoftmaxHead("digit", num_classes=6, label_smoothing=eps)
  loss_sum, _, _ = head.loss_terms(targets, logits, weights)
  reference = keras.losses.CategoricalCrossentropy(
      from_logits=True, label_smoothing=eps, reduction="sum")(targets, logits, sample_weight=weights)
  np.testing.assert_allclose(loss_sum, reference, rtol=1e-6)


def test_class_weights_weight_each_example_by_its_class_in_sum_and_normaliser():
  logits, labels, weights = _data(seed=2)
  class_weights = np.array([1.0, 5.0, 0.5, 2.0, 0.0, 1.0], np.float32)
  head = heads.SoftmaxHead("digit", num_classes=6, class_weights=class_weights,
                           label_smoothing=0.1)
  loss_sum, weight_sum, _ = head.loss_terms(labels, logits, weights)
  per_example_weight = weights * class_weights[labels]
  reference = keras.losses.CategoricalCrossentropy(
      from_logits=True, label_smoothing=0.1, reduction="sum")(
          np.eye(6)[labels], logits, sample_weight=per_example_weight)
  np.testing.assert_allclose(loss_sum, reference, rtol=1e-6)
  np.testing.assert_allclose(weight_sum, per_example_weight.sum(), rtol=1e-6)
  soft_sum, soft_weight, _ = head.loss_terms(np.eye(6, dtype=np.float32)[labels], logits, weights)
  np.testing.assert_allclose(soft_sum, loss_sum, rtol=1e-6)  # One-hot = class ids.
  np.testing.assert_allclose(soft_weight, weight_sum, rtol=1e-6)


def test_smoothing_with_many_classes_builds_no_one_hot():
  head = heads.SoftmaxHead("token", num_classes=50_000, label_smoothing=0.1)
  graph = tf.function(head.loss_terms).get_concrete_function(
      tf.TensorSpec([8], tf.int64), tf.TensorSpec([8, 50_000], tf.float32)).graph
  assert not [op for op in graph.get_operations() if op.type == "OneHot"]
  assert not [op for op in graph.get_operations()
              if any(out.shape.as_list() == [8, 50_000] and out.dtype != tf.float32
                     for out in op.outputs)]


def test_smoothed_loss_stays_finite_for_extreme_logits_in_float32_and_float16():
  logits = tf.constant([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], tf.float32)
  head = heads.SoftmaxHead("digit", num_classes=3, label_smoothing=0.1)
  for dtype, values in ((tf.float32, logits), (tf.float16, tf.constant([[65000.0, -65000.0, 0.0],
                                                                         [-65000.0, 65000.0, 1.0]]))):
    values = tf.cast(values, dtype)
    with tf.GradientTape() as tape:
      tape.watch(values)
      loss_sum, _, _ = head.loss_terms(tf.constant([1, 0]), values)
    gradient = tape.gradient(loss_sum, values)
    assert loss_sum.dtype == tf.float32 and np.isfinite(loss_sum.numpy())
    assert np.all(np.isfinite(tf.cast(gradient, tf.float32).numpy()))


def test_temperature_divides_logits_in_predict_and_is_a_saved_variable(tmp_path):
  head = _built(heads.SoftmaxHead("digit", num_classes=3, temperature=2.0))
  logits = tf.constant([[2.0, 0.0, -2.0]])
  expected = np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum()
  np.testing.assert_allclose(head.predict(logits)["probabilities"][0], expected, rtol=1e-6)
  head.temperature.assign(4.0)
  path = tf.train.Checkpoint(head=head).save(str(tmp_path / "ckpt"))
  restored = _built(heads.SoftmaxHead("digit", num_classes=3))
  tf.train.Checkpoint(head=restored).restore(path).assert_existing_objects_matched()
  assert float(restored.temperature) == 4.0


def _numpy_ece(probabilities, labels, weights, bins=15):
  """Direct ECE: bins (k/15, (k+1)/15], a confidence of 1.0 in the last one."""
  confidence = probabilities.max(1)
  correct = (probabilities.argmax(1) == labels).astype(np.float64)
  index = np.minimum((confidence * bins).astype(int), bins - 1)
  ece = 0.0
  for b in range(bins):
    member = index == b
    if weights[member].sum() > 0:
      ece += abs(np.sum(weights[member] * (correct[member] - confidence[member])))
  return ece / weights.sum()


def test_metrics_match_keras_and_a_direct_numpy_ece_across_batches():
  logits, labels, weights = _data(seed=3, batch=96, scale=4.0)
  logits[:5] = [100.0, 0, 0, 0, 0, 0]  # Confidence exactly 1.0 in float32.
  head = _built(heads.SoftmaxHead("digit", num_classes=6, top_k=2, temperature=1.5))
  for part in np.split(np.arange(96), 3):  # Three batches: sums must add up.
    head.update_metrics(labels[part], logits[part], weights[part])
  scaled = logits / 1.5
  probabilities = np.exp(scaled - scaled.max(1, keepdims=True))
  probabilities /= probabilities.sum(1, keepdims=True)
  assert probabilities[:5].max(1).min() == 1.0
  top2 = keras.metrics.SparseTopKCategoricalAccuracy(k=2)
  top2.update_state(labels, logits, weights)
  nll = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(
      labels, scaled, sample_weight=weights) / weights.sum()
  results = {name: float(value) for name, value in head.metric_results().items()}
  np.testing.assert_allclose(results["top2_accuracy"], float(top2.result()), rtol=1e-6)
  np.testing.assert_allclose(results["nll"], nll, rtol=1e-5)
  np.testing.assert_allclose(results["ece"], _numpy_ece(probabilities, labels, weights), rtol=1e-5)
  np.testing.assert_allclose(results["mean_confidence"],
                             np.sum(probabilities.max(1) * weights) / weights.sum(), rtol=1e-5)
  accuracy = np.sum((logits.argmax(1) == labels) * weights) / weights.sum()
  np.testing.assert_allclose(results["accuracy"], accuracy, rtol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: heads.SoftmaxHead("only", num_classes=1),
    lambda: heads.SequenceSoftmaxHead("only", num_classes=1),
    lambda: heads.EntmaxHead("only", num_classes=1),
    lambda: heads.LargeVocabSoftmaxHead("only", vocab_size=1)])
def test_a_single_class_softmax_head_is_refused_suggesting_sigmoid(make):
  # It would always predict its one class with probability 1: loss 0, nothing learned.
  with pytest.raises(ValueError, match=r"Head 'only': (num_classes|vocab_size) must be an "
                     r"integer >= 2; received 1\. .*SigmoidHead\('only', 1\)"):
    make()


@pytest.mark.parametrize("kwargs,message", [
    ({"label_smoothing": 1.3}, r"'digit': label_smoothing \(1.3\) must be in \[0, 1\)"),
    ({"class_weights": [1.0, 2.0]}, r"'digit': class_weights must be 3 numbers >= 0"),
    ({"class_weights": [1.0, -2.0, 1.0]}, r"'digit': class_weights must be 3 numbers >= 0"),
    ({"temperature": 0.0}, r"'digit': temperature must be > 0; received 0.0"),
    ({"top_k": 0}, r"'digit': top_k must be an integer >= 1; received 0"),
    ({"double_softmax": "maybe"}, r"'digit': double_softmax must be one of"),
])
def test_bad_softmax_arguments_name_the_head(kwargs, message):
  with pytest.raises(ValueError, match=message):
    heads.SoftmaxHead("digit", num_classes=3, **kwargs)
