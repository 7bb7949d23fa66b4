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
      # Without XLA: the summaries are written on the host either way; compiling the
      # train, diagnostic and eval programs was most of this fixture's time.
      config=engine.Config(model_dir=model_dir, steps_per_loop=5, eval_every=10, seed=0,
                           diagnostics_every=10,
                           jit_compile=False))
  results = trainer.train(engine.data.synthetic("train", 32, num_examples=256), steps=20,
                          eval_dataset=engine.data.synthetic("eval", 64, num_examples=128))
  return model_dir, trainer, results


def test_train_summaries_hold_every_head_and_the_run_measurements(summarised_run):
  model_dir, trainer, _ = summarised_run
  scalars = _scalars(os.path.join(model_dir, "train"))
  overview = {f"Overview/{name}" for name in (
      "loss", "learning_rate", "gradient_norm", "steps_per_second")}
  expected = overview | {f"{name}/loss" for name in ("digit", "parity", "box")}
  expected |= {"parity/weighted_loss", "box/weighted_loss"}  # Weights 0.5 and 0.25.
  expected |= {"digit/accuracy", "parity/accuracy", "box/mae"}  # Main metrics ("basic").
  expected |= {"digit/trunk_gradient_norm", "gradient_cosine/digit_vs_parity"}
  assert expected <= set(scalars)
  # No duplicates: digit's weight is 1; static weights; float32 and all steps finite.
  assert not {"digit/weighted_loss", "digit/loss_weight", "Overview/examples_per_second",
              "Overview/skipped_steps", "digit/nonfinite_steps", "loss"} & set(scalars)
  assert {tag.split("/")[0] for tag in scalars} == {
      "Overview", "digit", "parity", "box", "gradient_cosine"}
  assert "box/rmse" not in scalars and "digit/nll" not in scalars  # Evaluation only.
  # At multiples of diagnostics_every (from the second loop on), as the global norm.
  assert sorted(scalars["digit/trunk_gradient_norm"]) == [10, 20]
  assert sorted(scalars["Overview/gradient_norm"]) == [10, 20]
  loss = scalars["Overview/loss"]
  assert sorted(loss) == [5, 10, 15, 20]
  for step in loss:
    total = (scalars["digit/loss"][step] + scalars["parity/weighted_loss"][step]
             + scalars["box/weighted_loss"][step])
    np.testing.assert_allclose(loss[step], total, rtol=1e-5)
    np.testing.assert_allclose(scalars["parity/weighted_loss"][step],
                               0.5 * scalars["parity/loss"][step], rtol=1e-6)
  np.testing.assert_allclose(scalars["Overview/learning_rate"][20], 1e-2, rtol=1e-6)
  assert scalars["digit/loss"][20] < scalars["digit/loss"][5]


def test_eval_summaries_match_what_evaluate_returned(summarised_run):
  model_dir, _, results = summarised_run
  scalars = _scalars(os.path.join(model_dir, "eval"))
  assert sorted(scalars["Overview/loss"]) == [10, 20]
  dropped = {"digit/nll", "parity/nll", "digit/weighted_loss"}  # Equal to a loss.
  for key, value in results.items():
    tag = "Overview/loss" if key == "loss" else key
    if key in dropped:
      assert tag not in scalars
      np.testing.assert_allclose(value, results[key.replace("nll", "loss").replace(
          "weighted_loss", "loss")], rtol=1e-5)
    else:
      np.testing.assert_allclose(scalars[tag][20], value, rtol=1e-6)


def test_the_layout_keeps_what_changes_and_what_mixed_float16_makes_news():
  import heads  # pylint: disable=import-outside-toplevel
  from engine import summaries  # pylint: disable=import-outside-toplevel
  smoothed = heads.SoftmaxHead("a", 3, label_smoothing=0.1)
  plain = heads.SoftmaxHead("b", 3, weight=heads.weighting.Uncertainty())
  scalars = {"a/nll": 1.0, "a/loss": 1.1, "b/nll": 1.0, "b/loss": 1.0, "b/loss_weight": 0.7,
             "b/weighted_loss": 0.7, "a/loss_weight": 1.0, "skipped_steps": 0.0,
             "a/nonfinite_steps": 0.0, "b/nonfinite_steps": 2.0}
  assert summaries.layout(scalars, [smoothed, plain]) == {
      "a/nll": 1.0, "a/loss": 1.1, "b/loss": 1.0, "b/loss_weight": 0.7,
      "b/weighted_loss": 0.7, "b/nonfinite_steps": 2.0}
  mixed = summaries.layout(scalars, [smoothed, plain], "mixed_float16")
  assert {"Overview/skipped_steps", "a/nonfinite_steps"} <= set(mixed)
  plain.temperature.assign(2.0)  # Calibrated: the NLL is no longer the training loss.
  assert "b/nll" in summaries.layout(scalars, [smoothed, plain])
