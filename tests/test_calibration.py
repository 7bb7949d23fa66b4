"""Temperature, vector and Platt scaling: exact NLL minima, known maps recovered, and a
miscalibrated model made better."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
from engine import calibration
from engine import calibration_fits
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


def _gradient(objective, x, epsilon=1e-6):
  return np.array([(objective(x + epsilon * e) - objective(x - epsilon * e)) / (2 * epsilon)
                   for e in np.eye(len(x))])


def _per_class_miscalibrated(seed, n=6000, classes=4):
  """Labels drawn from softmax(z); the model's logits scaled and shifted per class."""
  rng = np.random.RandomState(seed)
  true_logits = rng.normal(size=(n, classes)) * 2
  labels = np.array([rng.choice(classes, p=p) for p in tf.nn.softmax(true_logits).numpy()])
  scale, shift = np.array([3.0, 0.5, 1.5, 0.25]), np.array([0.0, 1.0, -1.0, 0.5])
  return (true_logits - shift) / scale, np.eye(classes)[labels]


def _nll_of(logits, targets):
  return float(-np.mean(np.sum(targets * tf.nn.log_softmax(logits).numpy(), axis=1)))


def test_vector_scaling_is_the_nll_minimum_and_beats_one_temperature_when_classes_differ():
  logits, targets = _per_class_miscalibrated(seed=2)
  test_logits, test_targets = _per_class_miscalibrated(seed=3)
  weights = np.random.RandomState(4).uniform(0.5, 1.5, len(logits))
  scale, bias = calibration.fit_vector_scaling(logits, targets, weights)
  classes = logits.shape[1]

  def nll(x):  # The weighted mean NLL at (scale, bias), written independently.
    scaled = logits * x[:classes] + x[classes:]
    log_p = scaled - np.log(np.sum(np.exp(scaled), axis=1, keepdims=True))
    return -np.sum(weights * np.sum(targets * log_p, axis=1)) / np.sum(weights)
  fitted = np.concatenate([scale, bias])
  assert np.max(np.abs(_gradient(nll, fitted))) < 1e-4  # First-order optimal.
  temperature = calibration.fit_temperature(logits, targets)
  raw = _nll_of(test_logits, test_targets)
  by_temperature = _nll_of(test_logits / temperature, test_targets)
  by_vector = _nll_of(test_logits * scale + bias, test_targets)
  assert by_vector < by_temperature - 0.02 and by_temperature < raw
  np.testing.assert_allclose(scale, [3.0, 0.5, 1.5, 0.25], rtol=0.15)  # The map undone.


def test_platt_scaling_recovers_a_known_map_per_label_and_is_the_nll_minimum():
  rng = np.random.RandomState(5)
  logits = rng.normal(size=(20000, 3)) * 2
  scale, bias = np.array([2.0, 0.5, 1.0]), np.array([-1.0, 0.5, 0.0])
  labels = (rng.uniform(size=logits.shape) < 1 / (1 + np.exp(-(logits * scale + bias))))
  fitted_scale, fitted_bias = calibration.fit_platt(logits, labels.astype(float))
  np.testing.assert_allclose(fitted_scale, scale, rtol=0.05)
  np.testing.assert_allclose(fitted_bias, bias, atol=0.05)
  targets = calibration_fits.platt_targets(labels.astype(float))
  assert targets.max() < 1 and targets.min() > 0  # Platt's smoothing: never 0 or 1.
  for label in range(3):
    def nll(x, label=label):
      u = logits[:, label] * x[0] + x[1]
      return np.mean(np.logaddexp(0, u) - targets[:, label] * u)
    x = np.array([fitted_scale[label], fitted_bias[label]])
    assert np.max(np.abs(_gradient(nll, x))) < 1e-6


@pytest.fixture(scope="module")
def over_confident(tmp_path_factory):
  trainer = engine.Trainer(
      trunk=small_trunk(64), heads=heads.parse_heads(engine.data.DEMO_HEADS),
      optimizer=keras.optimizers.Adam(1e-2),
      config=engine.Config(model_dir=str(tmp_path_factory.mktemp("over_confident")),
                           steps_per_loop=200, seed=0, head_diagnostics=False))
  # 128 training examples for 600 steps: memorised, hence over-confident elsewhere.
  trainer.train(engine.data.synthetic("train", 32, num_examples=128), steps=600)
  return trainer


def test_calibrating_an_over_confident_model_lowers_its_ece(over_confident):
  trainer = over_confident
  held_out = engine.data.synthetic("calibration", 256, num_examples=2048)
  test = engine.data.synthetic("eval", 256, num_examples=2048)
  before = trainer.evaluate(test)
  fitted = calibration.calibrate(trainer.model, trainer.heads, held_out)
  after = trainer.evaluate(test)
  assert sorted(fitted) == ["digit", "parity"]  # Not the regression head.
  temperature = fitted["digit"]["temperature"]
  assert temperature > 1.2  # Over-confident: the logits are scaled down.
  assert float(trainer.heads[0].temperature.numpy()) == pytest.approx(temperature)
  for metric in ("ece", "adaptive_ece", "brier", "nll"):
    assert after[f"digit/{metric}"] < before[f"digit/{metric}"], metric
  assert after["digit/ece"] < 0.6 * before["digit/ece"]
  assert after["digit/accuracy"] == before["digit/accuracy"]  # T never changes the argmax.
  table = calibration.report(before, after, fitted)
  assert re.search(rf"^digit +fitted +temperature {temperature:.4f}$", table, re.M)
  assert re.search(r"^digit +adaptive_ece +0\.\d{4} +0\.\d{4}$", table, re.M)
  # Vector scaling replaces the temperature (back to 1) with a map per class.
  vector = calibration.calibrate(trainer.model, trainer.heads, held_out, method="vector")
  assert float(trainer.heads[0].temperature.numpy()) == 1.0
  np.testing.assert_allclose(trainer.heads[0].calibration_scale.numpy(),
                             vector["digit"]["scale"], rtol=1e-6)
  assert trainer.evaluate(test)["digit/nll"] < before["digit/nll"]


def test_platt_scaling_calibrates_a_sigmoid_head_in_predict_and_metrics(make_trainer):
  rng = np.random.RandomState(0)
  features = rng.normal(size=(512, 8)).astype(np.float32)
  labels = (rng.uniform(size=(512, 2)) < 0.5 * (features[:, :2] > 0) + 0.25).astype(np.float32)
  head = heads.SigmoidHead("tags", 2)
  trainer = make_trainer(head_list=[head], optimizer=keras.optimizers.Adam(0.05))
  data = tf.data.Dataset.from_tensor_slices((features, {"tags": labels})).batch(64)
  trainer.train(data.repeat(), steps=100)
  before = trainer.evaluate(data)
  raw = trainer.predict(features[:8])["tags"]["probabilities"]
  fitted = calibration.calibrate(trainer.model, trainer.heads, data, method="platt")
  scale, bias = fitted["tags"]["scale"], fitted["tags"]["bias"]
  logits = np.log(raw) - np.log1p(-raw)
  np.testing.assert_allclose(trainer.predict(features[:8])["tags"]["probabilities"],
                             1 / (1 + np.exp(-(logits * scale + bias))), rtol=1e-4)
  assert trainer.evaluate(data)["tags/brier"] < before["tags/brier"]
  assert calibration.calibrate(trainer.model, trainer.heads, data, method="vector") == {}


def test_each_method_fits_its_kind_of_head():
  regression = heads.RegressionHead("box", units=4)
  softmax, sigmoid = heads.SoftmaxHead("s", 3), heads.SigmoidHead("m", 3)
  everything = [regression, heads.SparsemaxHead("sparse", num_classes=3), softmax, sigmoid]
  assert calibration.calibratable(everything, "temperature") == [softmax]
  assert calibration.calibratable(everything, "vector") == [softmax]
  assert calibration.calibratable(everything, "platt") == [sigmoid]
  with pytest.raises(ValueError, match=r"method must be one of \('temperature', 'vector', "
                                       r"'platt'\); received 'matrix'"):
    calibration.calibrate(None, everything, None, method="matrix")
