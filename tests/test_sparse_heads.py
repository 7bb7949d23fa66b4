"""Sparsemax and entmax against NumPy references written here, and their gradients."""

import numpy as np
import pytest
import tensorflow as tf

import heads
from heads import normalisers


def numpy_sparsemax(z):
  """Sort-based sparsemax (Martins & Astudillo 2016, Algorithm 1), row by row."""
  out = np.zeros_like(z, dtype=np.float64)
  for i, row in enumerate(np.asarray(z, np.float64)):
    ordered = np.sort(row)[::-1]
    cumulative = np.cumsum(ordered)
    k = np.arange(1, len(row) + 1)
    support = k[1 + k * ordered > cumulative].max()
    tau = (cumulative[support - 1] - 1) / support
    out[i] = np.maximum(row - tau, 0)
  return out


def numpy_entmax(z, alpha, steps=200):
  """alpha-entmax by float64 bisection on tau: p = [(alpha-1) z - tau]_+^(1/(alpha-1))."""
  x = (alpha - 1) * np.asarray(z, np.float64)
  out = np.zeros_like(x)
  for i, row in enumerate(x):
    low, high = row.max() - 1, row.max()
    for _ in range(steps):
      tau = (low + high) / 2
      if np.sum(np.maximum(row - tau, 0) ** (1 / (alpha - 1))) >= 1:
        low = tau
      else:
        high = tau
    p = np.maximum(row - tau, 0) ** (1 / (alpha - 1))
    out[i] = p / p.sum()
  return out


def numpy_fenchel_young(p, z, labels, alpha):
  onehot = np.eye(z.shape[1])[labels]
  omega = (np.sum(p ** alpha, 1) - 1) / (alpha * (alpha - 1))
  return np.sum((p - onehot) * z, 1) - omega


def _logits(seed=0, batch=50, classes=8, scale=2.0):
  return (scale * np.random.default_rng(seed).normal(size=(batch, classes))).astype(np.float32)


def test_sparsemax_matches_the_numpy_reference_with_supports_above_one():
  z = _logits()
  p = normalisers.sparsemax(z).numpy()
  reference = numpy_sparsemax(z)
  np.testing.assert_allclose(p, reference, atol=1e-6)
  np.testing.assert_array_equal(p == 0, reference == 0)  # Exact zeros where expected.
  np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
  assert (p > 0).sum(1).max() > 1 and (p == 0).any()
  np.testing.assert_allclose(normalisers.sparsemax(tf.constant([[1.0, 1.0], [0.5, 0.2]])),
                             [[0.5, 0.5], [0.65, 0.35]], rtol=1e-6)  # Keras 3.15 gets these wrong.


@pytest.mark.parametrize("alpha", [1.5, 1.2, 1.8, 2.0])
def test_entmax_matches_a_float64_bisection_reference(alpha):
  z = _logits(seed=1)
  p = (normalisers.entmax15(z) if alpha == 1.5 else normalisers.entmax_bisect(z, alpha)).numpy()
  reference = numpy_entmax(z, alpha)
  np.testing.assert_allclose(p, reference, atol=2e-6)
  np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(p[reference > 1e-4] > 0, True)
  if alpha == 1.5:
    np.testing.assert_array_equal(p == 0, reference == 0)
    assert (p == 0).any() and (p > 0).sum(1).max() > 1


@pytest.mark.parametrize("head", [
    heads.SparsemaxHead("s", num_classes=8),
    heads.EntmaxHead("e", num_classes=8),
    heads.EntmaxHead("e13", num_classes=8, alpha=1.3),
])
def test_fenchel_young_loss_matches_numpy_and_is_zero_at_a_confident_prediction(head):
  z = _logits(seed=2)
  labels = np.random.default_rng(2).integers(0, 8, size=50)
  loss_sum, _, _ = head.loss_terms(labels, z)
  p = head.normalise(z).numpy().astype(np.float64)
  expected = numpy_fenchel_young(p, z.astype(np.float64), labels, head.alpha)
  np.testing.assert_allclose(loss_sum, expected.sum(), rtol=1e-5)
  assert np.all(expected >= -1e-6)
  confident = np.array([[20.0, 0, 0, 0, 0, 0, 0, 0]], np.float32)
  np.testing.assert_allclose(head.loss_terms([0], confident)[0], 0.0, atol=1e-6)


@pytest.mark.parametrize("head", [heads.SparsemaxHead("s", 6), heads.EntmaxHead("e", 6)])
def test_gradients_are_p_minus_onehot_and_agree_with_finite_differences(head):
  z = _logits(seed=3, batch=4, classes=6, scale=1.5)
  labels = np.array([0, 3, 5, 2])
  theoretical, numerical = tf.test.compute_gradient(
      lambda x: head.loss_terms(labels, x)[0], [tf.constant(z)], delta=1e-3)
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=5e-3)
  with tf.GradientTape() as tape:
    logits = tf.constant(z)
    tape.watch(logits)
    loss_sum, _, _ = head.loss_terms(labels, logits)
  expected = head.normalise(z).numpy() - np.eye(6)[labels]
  np.testing.assert_allclose(tape.gradient(loss_sum, logits), expected, atol=1e-6)


@pytest.mark.parametrize("head", [heads.SparsemaxHead("s", 3), heads.EntmaxHead("e", 3),
                                  heads.EntmaxHead("e17", 3, alpha=1.7)])
def test_extreme_and_half_precision_logits_stay_finite(head):
  for logits in (tf.constant([[1e4, -1e4, 0.0], [-1e4, 1e4, 9999.0]]),
                 tf.constant([[65000.0, -65000.0, 0.0], [-65000.0, 65000.0, 64000.0]], tf.float16)):
    with tf.GradientTape() as tape:
      tape.watch(logits)
      loss_sum, _, _ = head.loss_terms([1, 2], logits)
    gradient = tf.cast(tape.gradient(loss_sum, logits), tf.float32)
    probabilities = head.predict(logits)["probabilities"]
    assert loss_sum.dtype == tf.float32 and np.isfinite(loss_sum.numpy())
    assert np.all(np.isfinite(gradient.numpy()))
    np.testing.assert_allclose(tf.reduce_sum(probabilities, -1), 1.0, rtol=1e-5)


def test_support_size_and_accuracy_metrics():
  head = heads.SparsemaxHead("s", num_classes=3)
  head(tf.zeros([1, 2]))
  logits = tf.constant([[1.0, 1.0, -5.0], [3.0, 0.0, 0.0], [0.0, 0.1, 0.05]])
  head.update_metrics([1, 0, 2], logits, [1.0, 1.0, 2.0])
  support = numpy_sparsemax(logits.numpy())
  np.testing.assert_allclose(head.support_size.result(),
                             np.sum((support > 0).sum(1) * [1, 1, 2]) / 4, rtol=1e-6)
  assert [m.name for m in head.metrics] == ["accuracy", "support_size", "calibration"]


@pytest.mark.parametrize("make,message", [
    (lambda: heads.EntmaxHead("e", 4, alpha=1.0), r"'e': alpha must be in \(1, 2\]"),
    (lambda: heads.SparsemaxHead("s", 1), r"'s': num_classes must be an integer >= 2"),
])
def test_bad_sparse_head_arguments_name_the_head(make, message):
  with pytest.raises(ValueError, match=message):
    make()
