"""TensorBoard scalars, read back with TensorBoard's own event reader."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator


def _scalars(directory):
  accumulator = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
  accumulator.Reload()
  return {tag: {event.step: float(tf.make_ndarray(event.tensor_proto))
                for event in accumulator.Tensors(tag)}
          for tag in accumulator.Tags()["tensors"]
          if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}


@pytest.fixture(scope="module")
def summarised_run(tmp_path_factory):
  import engine  # pylint: disable=import-outside-toplevel
  from tests.conftest import small_trunk  # pylint: disable=import-outside-toplevel
  import heads  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel
  model_dir = str(tmp_path_factory.mktemp("summaries"))
  trainer = engine.Trainer(
      trunk=small_trunk(), heads=heads.parse_heads(engine.data.DEMO_HEADS),
      optimizer=keras.optimizers.Adam(1e-2),
      config=engine.Config(model_dir=model_dir, steps_per_loop=5, eval_every=10, seed=0))
  results = trainer.train(engine.data.synthetic("train", 32, num_examples=256), steps=20,
                          eval_dataset=engine.data.synthetic("eval", 64, num_examples=128))
  return model_dir, trainer, results


def test_train_summaries_hold_every_head_and_the_run_measurements(summarised_run):
  model_dir, trainer, _ = summarised_run
  scalars = _scalars(os.path.join(model_dir, "train"))
  expected = {"loss", "learning_rate", "gradient_norm", "steps_per_second", "examples_per_second"}
  for name in ("digit", "parity", "box"):
    expected |= {f"{name}/loss", f"{name}/weighted_loss"}
  expected |= {"digit/accuracy", "parity/accuracy", "box/mae"}  # Main metrics ("basic").
  expected |= {"digit/trunk_gradient_norm", "gradient_cosine/digit_vs_parity"}
  assert expected <= set(scalars)
  assert "box/rmse" not in scalars and "digit/nll" not in scalars  # Evaluation only.
  assert sorted(scalars["digit/trunk_gradient_norm"]) == [10, 15, 20]  # From the second loop.
  assert sorted(scalars["loss"]) == [5, 10, 15, 20]
  for step in scalars["loss"]:
    total = sum(scalars[f"{name}/weighted_loss"][step] for name in ("digit", "parity", "box"))
    np.testing.assert_allclose(scalars["loss"][step], total, rtol=1e-5)
    np.testing.assert_allclose(scalars["parity/weighted_loss"][step],
                               0.5 * scalars["parity/loss"][step], rtol=1e-6)
    np.testing.assert_allclose(scalars["examples_per_second"][step],
                               32 * scalars["steps_per_second"][step], rtol=1e-4)
  np.testing.assert_allclose(scalars["learning_rate"][20], 1e-2, rtol=1e-6)
  assert scalars["digit/loss"][20] < scalars["digit/loss"][5]


def test_eval_summaries_match_what_evaluate_returned(summarised_run):
  model_dir, _, results = summarised_run
  scalars = _scalars(os.path.join(model_dir, "eval"))
  assert sorted(scalars["loss"]) == [10, 20]
  for key, value in results.items():
    np.testing.assert_allclose(scalars[key][20], value, rtol=1e-6)
