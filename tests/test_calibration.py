"""Temperature scaling: the exact NLL minimum, a known temperature, and lower ECE."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
from engine import calibration
from tests.conftest import small_trunk
import heads


def _nll(logits, targets, weights, temperature):
  log_p = tf.nn.log_softmax(logits / temperature, axis=-1).numpy()
  return -np.sum(weights * np.sum(targets * log_p, axis=1)) / np.sum(weights)


def test_fitted_temperature_is_the_minimum_of_the_nll():
  rng = np.random.RandomState(0)
  logits = rng.normal(size=(500, 5)) * 4
  targets = np.eye(5)[rng.randint(0, 5, size=500)]
  weights = rng.uniform(0, 2, size=500)
  fitted = calibration.fit_temperature(logits, targets, weights)
  grid = np.exp(np.linspace(np.log(0.1), np.log(100), 4001))
  best = grid[np.argmin([_nll(logits, targets, weights, t) for t in grid])]
  assert fitted == pytest.approx(best, rel=5e-3)
  for nearby in (fitted * 0.99, fitted * 1.01):
    assert _nll(logits, targets, weights, fitted) < _nll(logits, targets, weights, nearby)


def test_labels_drawn_at_a_known_temperature_recover_it():
  rng = np.random.RandomState(1)
  logits = rng.normal(size=(20000, 4)) * 3
  probabilities = tf.nn.softmax(logits / 2.5).numpy()
  labels = np.array([rng.choice(4, p=p) for p in probabilities])
  assert calibration.fit_temperature(logits, np.eye(4)[labels]) == pytest.approx(2.5, rel=0.05)


def test_calibrating_an_over_confident_model_lowers_its_ece(tmp_path):
  trainer = engine.Trainer(
      trunk=small_trunk(64), heads=heads.parse_heads(engine.data.DEMO_HEADS),
      optimizer=keras.optimizers.Adam(1e-2),
      config=engine.Config(model_dir=str(tmp_path), steps_per_loop=200, seed=0,
                           head_diagnostics=False))
  # 128 training examples for 600 steps: memorised, hence over-confident elsewhere.
  trainer.train(engine.data.synthetic("train", 32, num_examples=128), steps=600)
  held_out = engine.data.synthetic("eval", 256, num_examples=2048)
  test = engine.data.synthetic("test", 256, num_examples=2048)
  before = trainer.evaluate(test)
  temperatures = calibration.calibrate(trainer.model, trainer.heads, held_out)
  after = trainer.evaluate(test)
  assert sorted(temperatures) == ["digit", "parity"]  # Not the regression head.
  assert temperatures["digit"] > 1.2  # Over-confident: the logits are scaled down.
  assert float(trainer.heads[0].temperature.numpy()) == pytest.approx(temperatures["digit"])
  assert after["digit/ece"] < 0.6 * before["digit/ece"]
  assert after["digit/nll"] < before["digit/nll"]
  assert after["digit/accuracy"] == before["digit/accuracy"]  # T never changes the argmax.


def test_heads_without_a_temperature_are_left_alone():
  regression = heads.RegressionHead("box", units=4)
  assert calibration.calibratable([regression, heads.SparsemaxHead("s", num_classes=3)]) == []
