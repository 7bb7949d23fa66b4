"""Optimizers and learning-rate schedules from settings; progress lines from research code."""

import math
import os

from absl import logging
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import engine
from engine import optimizers
from tests import conftest


def _learning_rates(model_dir):
  accumulator = event_accumulator.EventAccumulator(os.path.join(model_dir, "train"),
                                                   size_guidance={"tensors": 0})
  accumulator.Reload()
  return {event.step: float(tf.make_ndarray(event.tensor_proto))
          for event in accumulator.Tensors("Overview/learning_rate")}


def _trainer(model_dir, config):
  return engine.Trainer(trunk=conftest.small_trunk(), heads=engine.experiment.function_of(
      "synthetic")(hidden_units=4).heads, optimizer=optimizers.create(config), config=config)


def test_sgd_cosine_with_warmup_rises_linearly_then_decays_and_resumes_exactly(tmp_path):
  config = engine.Config(model_dir=str(tmp_path), optimizer="sgd", lr_schedule="cosine",
                         warmup_steps=50, learning_rate=0.1, train_steps=90, steps_per_loop=10,
                         jit_compile=False, head_diagnostics=False, checkpoint_every=10)
  data = engine.data.synthetic("train", 16, num_examples=256)
  _trainer(str(tmp_path), config).train(data, steps=60)
  _trainer(str(tmp_path), config).train(data, steps=90)  # Resumed from step 60.
  rates = _learning_rates(str(tmp_path))
  assert sorted(rates) == list(range(10, 91, 10))

  def expected(step):  # The rate of the next step, after `step` updates.
    if step < 50:
      return 0.1 * step / 50
    return 0.1 * 0.5 * (1 + math.cos(math.pi * min(step - 50, 40) / 40))
  for step, rate in rates.items():
    assert rate == pytest.approx(expected(step), rel=1e-5, abs=1e-7), step
  rising = [rates[s] for s in (10, 20, 30, 40)]
  assert np.allclose(np.diff(rising), 0.02) and rates[60] < rates[50]


@pytest.mark.parametrize("schedule,settings,checks", [
    ("constant", {}, {0: 0.1, 500: 0.1}),
    ("linear", {"lr_end_fraction": 0.1}, {0: 0.1, 50: 0.055, 100: 0.01, 200: 0.01}),
    ("exponential", {"lr_decay_rate": 0.5, "lr_decay_steps": 10}, {0: 0.1, 10: 0.05, 20: 0.025}),
    ("piecewise", {"lr_boundaries": (10, 20), "lr_values": (0.3, 0.2, 0.1)},
     {0: 0.3, 10: 0.3, 11: 0.2, 21: 0.1}),
])
def test_each_schedule_follows_its_closed_form_after_warmup(schedule, settings, checks):
  config = engine.Config(model_dir="x", lr_schedule=schedule, learning_rate=0.1, train_steps=104,
                         warmup_steps=4, **settings)
  rate = optimizers.learning_rate(config)
  peak = settings.get("lr_values", (0.1,))[0]
  assert float(rate(2)) == pytest.approx(peak * 2 / 4)  # Warming up.
  for step, value in checks.items():
    assert float(rate(step + 4)) == pytest.approx(value, rel=1e-5), step


@pytest.mark.parametrize("name", engine.config.OPTIMIZERS)
def test_every_optimizer_decays_kernels_but_not_biases_or_scales(name):
  config = engine.Config(model_dir="x", optimizer=name, learning_rate=1.0, weight_decay=0.5)
  optimizer = optimizers.create(config)
  assert type(optimizer).__name__.lower() == name
  dense, norm = keras.layers.Dense(3), keras.layers.LayerNormalization()
  norm(dense(tf.ones([1, 2])))
  variables = [dense.kernel, dense.bias, norm.gamma, norm.beta]
  for variable in variables:
    variable.assign(tf.fill(variable.shape, 2.0))
  optimizer.build(variables)
  optimizer.apply_gradients([(tf.zeros(v.shape), v) for v in variables])
  assert np.all(dense.kernel.numpy() < 2.0)  # Decoupled decay shrinks the kernel ...
  for variable in variables[1:]:  # ... and leaves biases and normalisation scales alone.
    np.testing.assert_allclose(variable.numpy(), 2.0)


def test_progress_lines_reach_research_code_and_the_eta_ignores_compiling(tmp_path, capfd):
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)  # Research code: absl shows no INFO.
  try:
    config = engine.Config(model_dir=str(tmp_path), steps_per_loop=5, jit_compile=False,
                           head_diagnostics=False)
    _trainer(str(tmp_path), config).train(engine.data.synthetic("train", 16, num_examples=64),
                                          steps=15)
  finally:
    logging.set_verbosity(verbosity)
  lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("train |")]
  assert [line.split(" | ")[1] for line in lines] == ["step 5/15", "step 10/15", "step 15/15"]
  assert lines[0].endswith("eta -:--:--")  # The first loop compiled: no estimate from it.
  assert lines[-1].endswith("eta 0:00:00") and not lines[1].endswith("-:--:--")


def test_speed_counts_only_loops_that_compiled_nothing():
  speed = engine.progress.Speed()
  speed.add(100, 20.0, compiled=True)
  assert speed.eta(1000) is None
  speed.add(100, 1.0, compiled=False)
  speed.add(100, 3.0, compiled=False)
  assert speed.eta(1000) == pytest.approx(20.0)
