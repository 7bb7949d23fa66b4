"""The calibration metrics against NumPy references written here, and closed forms."""

import numpy as np
import pytest
import tensorflow as tf

from heads import calibration_metrics

BINS = calibration_metrics.NUM_BINS


def _bin(values):
  return np.minimum(np.floor(values * BINS).astype(int), BINS - 1)


def numpy_ece_and_mce(confidence, correct, weight):
  bins = _bin(confidence)
  total, gaps, worst = weight.sum(), 0.0, 0.0
  for b in range(BINS):
    inside = bins == b
    mass = weight[inside].sum()
    if mass > 0:
      gap = abs(np.sum(weight[inside] * correct[inside]) - np.sum(weight[inside] * confidence[inside]))
      gaps += gap
      worst = max(worst, gap / mass)
  return gaps / total, worst


def numpy_adaptive_ece(confidence, correct, weight):
  """Equal-mass bins by sorting; examples of equal confidence stay in one bin."""
  order = np.argsort(confidence, kind="stable")
  c, k, w = confidence[order], correct[order], weight[order]
  below = np.cumsum(w) - w
  first = {}
  for value, mass_below in zip(c, below):
    first.setdefault(value, mass_below)
  groups = np.minimum(np.floor(np.array([first[v] for v in c]) * BINS / w.sum()), BINS - 1)
  return sum(abs(np.sum((w * (k - c))[groups == g])) for g in range(BINS)) / w.sum()


def numpy_classwise_ece(probabilities, labels, weight):
  per_class = []
  for k in range(probabilities.shape[1]):
    ece, _ = numpy_ece_and_mce(probabilities[:, k], (labels == k).astype(float), weight)
    per_class.append(ece)
  return float(np.mean(per_class))


def numpy_brier(probabilities, labels, weight):
  one_hot = np.eye(probabilities.shape[1])[labels]
  return np.sum(weight * np.sum((probabilities - one_hot) ** 2, axis=1)) / weight.sum()


def metric_of(probabilities, labels, weight=None, batches=1):
  """The metric after updates in `batches` parts (the sums must add up)."""
  metric = calibration_metrics.CalibrationErrors(probabilities.shape[1])
  parts = np.array_split(np.arange(len(labels)), batches)
  for part in parts:
    metric.update_state(labels[part], probabilities[part],
                        None if weight is None else weight[part])
  return {name: float(value) for name, value in metric.result().items()}


def test_a_perfectly_calibrated_model_has_zero_errors_and_the_closed_form_brier():
  # 10 examples at p = (0.8, 0.2), 8 of class 0; 10 at (0.3, 0.7), 7 of class 1.
  probabilities = np.array([[0.8, 0.2]] * 10 + [[0.3, 0.7]] * 10, np.float32)
  labels = np.array([0] * 8 + [1] * 2 + [1] * 7 + [0] * 3)
  results = metric_of(probabilities, labels)
  for name in ("ece", "mce", "adaptive_ece", "classwise_ece"):
    assert results[name] == pytest.approx(0.0, abs=1e-6), name
  # Brier per example: 0.08 or 1.28 in the first group, 0.18 or 0.98 in the second.
  assert results["brier"] == pytest.approx((8 * 0.08 + 2 * 1.28 + 7 * 0.18 + 3 * 0.98) / 20)


def test_a_uniformly_overconfident_model_is_off_by_the_gap_in_every_binning():
  # Confidence 0.9 everywhere, right 60% of the time.
  probabilities = np.array([[0.9, 0.05, 0.05]] * 10, np.float32)
  labels = np.array([0] * 6 + [1] * 2 + [2] * 2)
  results = metric_of(probabilities, labels)
  for name in ("ece", "mce", "adaptive_ece"):
    assert results[name] == pytest.approx(0.3, abs=1e-6), name
  # Class 0: |0.6 - 0.9|; classes 1 and 2: |0.2 - 0.05|.
  assert results["classwise_ece"] == pytest.approx((0.3 + 0.15 + 0.15) / 3, abs=1e-6)


def _random_case(seed, n=300, classes=3):
  """Top confidences at distinct centres of the fine bins (so that no fine bin holds two
  examples), the other mass split between the other classes; one class never predicted."""
  rng = np.random.default_rng(seed)
  fine = calibration_metrics.FINE_BINS
  top = (rng.choice(np.arange(int(0.55 * fine), fine), n, replace=False) + 0.5) / fine
  split = rng.uniform(size=n)
  probabilities = np.stack([top, (1 - top) * split, (1 - top) * (1 - split)], axis=1)
  labels = np.where(rng.uniform(size=n) < top, 0, rng.integers(1, classes, n))
  return probabilities.astype(np.float32), labels, rng.uniform(0.0, 2.0, n)


@pytest.mark.parametrize("batches", [1, 4])
def test_every_metric_equals_its_numpy_reference_with_weights_and_empty_bins(batches):
  probabilities, labels, weight = _random_case(seed=batches)
  results = metric_of(probabilities, labels, weight, batches)
  p = probabilities.astype(np.float64)
  confidence, correct = p.max(axis=1), (p.argmax(axis=1) == labels).astype(float)
  ece, mce = numpy_ece_and_mce(confidence, correct, weight)
  assert np.sum(np.bincount(_bin(confidence), minlength=BINS) == 0) >= 8  # Empty bins.
  np.testing.assert_allclose(results["ece"], ece, rtol=1e-4)
  np.testing.assert_allclose(results["mce"], mce, rtol=1e-4)
  np.testing.assert_allclose(results["adaptive_ece"], numpy_adaptive_ece(confidence, correct,
                                                                         weight), rtol=1e-4)
  # Classes 1 and 2 are never the top class, yet each counts in classwise_ece.
  assert set(p.argmax(axis=1)) == {0}
  np.testing.assert_allclose(results["classwise_ece"], numpy_classwise_ece(p, labels, weight),
                             rtol=1e-4)
  np.testing.assert_allclose(results["brier"], numpy_brier(p, labels, weight), rtol=1e-4)


def test_zero_weights_count_nothing_and_xla_gives_the_same_sums():
  probabilities, labels, weight = _random_case(seed=7)
  weight[::3] = 0.0
  metric = calibration_metrics.CalibrationErrors(3)
  tf.function(metric.update_state, jit_compile=True)(labels, probabilities, weight)
  kept = weight > 0
  expected = metric_of(probabilities[kept], labels[kept], weight[kept])
  for name, value in metric.result().items():
    np.testing.assert_allclose(float(value), expected[name], rtol=1e-5, err_msg=name)


def test_binary_calibration_bins_every_label_probability():
  rng = np.random.default_rng(3)
  probabilities = rng.uniform(size=(64, 5)).astype(np.float32)
  labels = (rng.uniform(size=(64, 5)) < probabilities).astype(np.float32)
  weight = rng.uniform(0.5, 1.5, 64)
  metric = calibration_metrics.BinaryCalibration()
  metric.update_state(labels[:30], probabilities[:30], weight[:30])
  metric.update_state(labels[30:], probabilities[30:], weight[30:])
  pairs = np.repeat(weight, 5)
  ece, _ = numpy_ece_and_mce(probabilities.ravel().astype(np.float64), labels.ravel(), pairs)
  results = metric.result()
  np.testing.assert_allclose(float(results["ece"]), ece, rtol=1e-4)
  np.testing.assert_allclose(float(results["brier"]),
                             np.sum(pairs * (probabilities.ravel() - labels.ravel()) ** 2)
                             / pairs.sum(), rtol=1e-5)
