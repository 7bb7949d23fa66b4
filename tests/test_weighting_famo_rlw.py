"""FAMO and random loss weighting (RLW), against NumPy and in training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
import heads
from heads import weighting


def _bound(weighter, names):
  for name in names:
    heads.RegressionHead(name, 1, weight=weighter)
  return weighter


def test_random_weights_are_a_fresh_softmax_of_normals_each_step_and_repeatable():
  rlw = _bound(weighting.RandomWeights(seed=7), ["a", "b", "c"])
  draws = np.stack([rlw.weights(tf.constant(step)).numpy() for step in range(400)])
  np.testing.assert_allclose(draws.sum(axis=1), 1.0, rtol=1e-6)
  assert np.all(draws > 0) and np.std(draws[:, 0]) > 0.1  # Random, every step.
  np.testing.assert_allclose(draws.mean(axis=0), 1 / 3, atol=0.03)  # Exchangeable heads.
  again = weighting.RandomWeights(seed=7)
  _bound(again, ["a", "b", "c"])
  np.testing.assert_array_equal(again.weights(tf.constant(5)).numpy(), draws[5])
  noise = tf.random.stateless_normal([3], seed=tf.constant([7, 5], tf.int64)).numpy()
  np.testing.assert_allclose(draws[5], np.exp(noise) / np.exp(noise).sum(), rtol=1e-6)
  assert float(rlw.weight("b", tf.constant(5))) == pytest.approx(draws[5, 1])


def test_famo_first_update_matches_a_numpy_reference():
  famo = _bound(weighting.FAMO(learning_rate=0.1, decay=0.01), ["a", "b", "c"])
  np.testing.assert_allclose(famo.weights().numpy(), [1 / 3] * 3, rtol=1e-6)  # First step.
  losses = np.array([2.0, 0.5, 1.0])
  pairs = famo.updates({n: tf.constant(v) for n, v in zip("abc", losses)}, {}, tf.constant(0))
  for variable, value in pairs:
    variable.assign(value)
  z = np.full(3, 1 / 3)
  delta = np.log(1.0) - np.log(losses)  # Previous losses start at 1.
  gradient = z * delta - z * np.sum(z * delta)
  adam = gradient / (np.abs(gradient) + 1e-8)  # Adam's first step: m/sqrt(v) = sign.
  logits = -0.1 * adam  # Decay acts on logits 0.
  new_z = np.exp(logits) / np.exp(logits).sum()
  expected = new_z / (np.sum(new_z / losses) * losses)
  np.testing.assert_allclose(famo.weights().numpy(), expected, rtol=1e-5)
  # w_i L_i = z_i / c: the weighted losses are in the proportions z.
  np.testing.assert_allclose(famo.weights().numpy() * losses / np.sum(famo.weights() * losses),
                             new_z, rtol=1e-5)
  assert famo.summaries("b")["famo_z"].numpy() == pytest.approx(new_z[1], rel=1e-5)


def test_famo_weights_a_loss_100x_larger_about_100x_less_in_training(make_trainer):
  famo = weighting.FAMO()
  head_list = [heads.RegressionHead("small", 1, weight=famo),
               heads.RegressionHead("large", 1, weight=famo)]
  x, _ = engine.data.synthetic_arrays("train", 256)
  labels = {"small": x[:, :1] + 1.0, "large": 10.0 * (x[:, 1:2] - 2.0)}
  data = tf.data.Dataset.from_tensor_slices((x, labels)).repeat().batch(32)
  trainer = make_trainer(head_list=head_list, optimizer=keras.optimizers.Adam(1e-2),
                         steps_per_loop=20)
  trainer.train(data, steps=40)
  weights = famo.weights().numpy()
  previous = np.array([float(getattr(famo, f"previous_loss_{n}")) for n in ("small", "large")])
  assert previous[1] > 20 * previous[0]
  ratio = weights[0] / weights[1]
  assert 0.3 * previous[1] / previous[0] < ratio < 3 * previous[1] / previous[0]
  assert trainer.last_train_scalars["small/loss_weight"] == pytest.approx(weights[0], rel=1e-5)
  assert "small/famo_z" in trainer.last_train_scalars
