"""SigmoidHead against Keras's binary cross-entropy, a closed form and NumPy metrics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import heads


def _data(seed=0, batch=64, classes=4):
  rng = np.random.default_rng(seed)
  logits = (2 * rng.normal(size=(batch, classes))).astype(np.float32)
  targets = (rng.uniform(size=(batch, classes)) < 0.4).astype(np.float32)
  weights = rng.uniform(0.2, 2.0, size=batch).astype(np.float32)
  return logits, targets, weights


def test_loss_matches_keras_binary_crossentropy():
  logits, targets, weights = _data()
  head = heads.SigmoidHead("tags", num_classes=4)
  loss_sum, weight_sum, _ = head.loss_terms(targets, logits, weights)
  reference = keras.losses.BinaryCrossentropy(from_logits=True, reduction="sum")(
      targets, logits, sample_weight=weights)
  np.testing.assert_allclose(loss_sum, reference, rtol=1e-6)
  np.testing.assert_allclose(weight_sum, weights.sum(), rtol=1e-6)


def test_pos_weight_scales_the_positive_term_per_class():
  logits, targets, weights = _data(seed=1)
  pos_weight = np.array([1.0, 3.0, 0.5, 10.0])
  head = heads.SigmoidHead("tags", num_classes=4, pos_weight=pos_weight)
  loss_sum, _, _ = head.loss_terms(targets, logits, weights)
  z = logits.astype(np.float64)
  log_p, log_not_p = -np.logaddexp(0, -z), -np.logaddexp(0, z)
  per_example = -(pos_weight * targets * log_p + (1 - targets) * log_not_p).mean(1)
  np.testing.assert_allclose(loss_sum, np.sum(per_example * weights), rtol=1e-6)


def test_extreme_logits_give_finite_loss_and_gradient():
  logits = tf.constant([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]])
  head = heads.SigmoidHead("tags", num_classes=3, pos_weight=[2.0, 2.0, 2.0])
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss_sum, _, _ = head.loss_terms(tf.constant([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]), logits)
  assert np.isfinite(loss_sum.numpy())
  assert np.all(np.isfinite(tape.gradient(loss_sum, logits).numpy()))
  # Row 1: softplus(1e4) + 2 softplus(1e4) + 2 log 2; row 2: 2 softplus(1e4) + 0 + softplus(3).
  expected = (1e4 + 2e4 + 2 * np.log(2)) / 3 + (2e4 + np.logaddexp(0, 3.0)) / 3
  np.testing.assert_allclose(loss_sum, expected, rtol=1e-6)


def _exact_auc(scores, targets, weights):
  order = np.argsort(scores)
  scores, targets, weights = scores[order], targets[order], weights[order]
  positives = weights * targets
  negatives = weights * (1 - targets)
  below = np.cumsum(negatives) - negatives  # Negative weight strictly below each score.
  return np.sum(positives * (below + 0.5 * negatives)) / (positives.sum() * negatives.sum())


def test_metrics_match_numpy_f1_exact_match_and_auc():
  logits, targets, weights = _data(seed=2, batch=300)
  head = heads.SigmoidHead("tags", num_classes=4, threshold=0.6)
  head(tf.zeros([1, 3]))
  for part in np.split(np.arange(300), 3):
    head.update_metrics(targets[part], logits[part], weights[part])
  predicted = (1 / (1 + np.exp(-logits)) >= 0.6).astype(np.float32)
  w = weights[:, None]
  tp = (predicted * targets * w).sum(0)
  fp = (predicted * (1 - targets) * w).sum(0)
  fn = ((1 - predicted) * targets * w).sum(0)
  micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())
  macro = np.mean(2 * tp / (2 * tp + fp + fn))
  exact = np.sum(np.all(predicted == targets, 1) * weights) / weights.sum()
  auc = _exact_auc(logits.ravel(), targets.ravel(), np.repeat(weights, 4))
  np.testing.assert_allclose(head.micro_f1.result(), micro, rtol=1e-5)
  np.testing.assert_allclose(head.macro_f1.result(), macro, rtol=1e-5)
  np.testing.assert_allclose(head.exact_match.result(), exact, rtol=1e-6)
  np.testing.assert_allclose(head.roc_auc.result(), auc, atol=0.01)  # Keras: 200 thresholds.


def test_predict_thresholds_each_class():
  outputs = heads.SigmoidHead("tags", num_classes=3, threshold=0.7).predict(
      tf.constant([[0.0, 1.0, 2.0]]))
  np.testing.assert_allclose(outputs["probabilities"], 1 / (1 + np.exp(-np.array([[0.0, 1, 2]]))),
                             rtol=1e-6)
  np.testing.assert_array_equal(outputs["classes"], [[0, 1, 1]])


def test_integer_multi_hot_labels_are_accepted():
  logits, targets, _ = _data()
  head = heads.SigmoidHead("tags", num_classes=4)
  as_float, _, _ = head.loss_terms(targets, logits)
  as_int, _, _ = head.loss_terms(targets.astype(np.int64), logits)
  np.testing.assert_allclose(as_int, as_float, rtol=1e-7)
  assert heads.base.matching_label_spec(head, tf.TensorSpec([None, 4], tf.int32)) is not None


@pytest.mark.parametrize("kwargs,message", [
    ({"pos_weight": [1.0]}, r"'tags': pos_weight must be 3 numbers > 0"),
    ({"threshold": 1.0}, r"'tags': threshold must be in \(0, 1\)"),
])
def test_bad_sigmoid_arguments_name_the_head(kwargs, message):
  with pytest.raises(ValueError, match=message):
    heads.SigmoidHead("tags", num_classes=3, **kwargs)
