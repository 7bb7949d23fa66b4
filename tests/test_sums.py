"""heads.sums against NumPy, eagerly and under XLA."""

import numpy as np
import pytest
import tensorflow as tf

from heads import sums


@pytest.mark.parametrize("jit", [False, True])
def test_weighted_sum_and_total_match_numpy_and_skip_values_of_weight_zero(jit):
  rng = np.random.default_rng(3)
  values = rng.normal(size=(6, 5)).astype(np.float32)
  weights = rng.uniform(0.5, 2.0, size=(6, 5)).astype(np.float32)
  weights[1, 2] = weights[4, 0] = 0.0
  values[1, 2] = np.nan  # An absent label's placeholder: must not reach the sum.
  values[4, 0] = np.inf
  run = tf.function(lambda f, *a: f(*a), jit_compile=jit) if jit else (lambda f, *a: f(*a))
  present = weights > 0
  np.testing.assert_allclose(run(sums.weighted_sum, values, weights).numpy(),
                             np.sum(np.where(present, values, 0.0) * weights), rtol=1e-5)
  np.testing.assert_allclose(run(sums.total, weights).numpy(), weights.sum(), rtol=1e-5)
  np.testing.assert_allclose(run(sums.dot, values[0], weights[0]).numpy(),
                             values[0] @ weights[0], rtol=1e-5)


def test_weighted_sum_broadcasts_per_example_weights_over_tokens():
  values = tf.constant([[1.0, 2.0], [3.0, 4.0]])
  weights = tf.constant([[2.0], [0.0]])
  assert float(sums.weighted_sum(values, weights)) == pytest.approx(6.0)


def test_a_nan_value_with_a_positive_weight_reaches_the_sum():
  assert np.isnan(float(sums.weighted_sum(tf.constant([np.nan, 1.0]), tf.constant([1.0, 1.0]))))


def test_weighted_sum_broadcasts_when_the_token_axis_is_unknown_when_traced():
  weighted = tf.function(sums.weighted_sum, input_signature=[
      tf.TensorSpec([None, None]), tf.TensorSpec([None, 1])])
  assert float(weighted(tf.constant([[1.0, 2.0], [3.0, 4.0]]),
                        tf.constant([[2.0], [0.0]]))) == pytest.approx(6.0)
