"""The Trainer against references: hand-written steps, Keras losses, checkpoints."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
import heads
from tests.conftest import dataset_of
from tests.conftest import small_trunk


def test_loops_are_traced_once_across_train_and_evaluate_calls(make_trainer, demo_batches):
  train, evaluation = demo_batches
  trainer = make_trainer(steps_per_loop=4, checkpoint_every=6, head_diagnostics=True,
                         diagnostics_every=4)
  for steps in (3, 10, 17):  # Loops of 3, 4, 1, 2, ... steps: lengths are tensors.
    trainer.train(train, steps=steps)
  trainer.evaluate(evaluation)
  trainer.evaluate(evaluation, steps=2)
  assert trainer.step == 17
  assert trainer.trace_counts == {"train_loop": 1, "train_step": 1, "gradients": 1,
                                  "diagnostic_loop": 1, "diagnostic_step": 1,
                                  "diagnostic_gradients": 1, "eval_loop": 1, "eval_step": 1,
                                  # In the train and diagnostic loops, and evaluation's.
                                  "report": 3}


def test_train_runs_until_the_global_step_and_checkpoints_on_multiples(make_trainer, demo_batches):
  train, _ = demo_batches
  trainer = make_trainer(steps_per_loop=4, checkpoint_every=5, max_checkpoints=10)
  trainer.train(train, steps=12)
  assert trainer.step == 12
  saved = tf.train.CheckpointManager(tf.train.Checkpoint(), trainer.config.model_dir, 10)
  assert [int(path.rsplit("-", 1)[1]) for path in saved.checkpoints] == [5, 10, 12]
  trainer.train(train, steps=12)  # Already there: nothing more.
  assert trainer.step == 12


def test_a_new_trainer_resumes_at_the_saved_step_with_the_saved_weights(make_trainer, demo_batches,
                                                                        tmp_path):
  train, evaluation = demo_batches
  first = make_trainer(model_dir=tmp_path / "run")
  first.train(train, steps=10)
  second = make_trainer(model_dir=tmp_path / "run", seed=7)  # Other initial weights.
  x, _ = engine.data.synthetic_arrays("eval", 8)
  second.build(tf.TensorSpec([None, x.shape[1]], tf.float32))
  assert second.step == 10
  for saved, restored in zip(first.model.variables, second.model.variables):
    np.testing.assert_array_equal(saved.numpy(), restored.numpy())
  for saved, restored in zip(first.optimizer.variables, second.optimizer.variables):
    np.testing.assert_array_equal(np.asarray(saved), np.asarray(restored))
  np.testing.assert_allclose(second.predict(x)["digit"]["probabilities"],
                             first.predict(x)["digit"]["probabilities"], rtol=1e-6)
  second.train(train, steps=15)
  assert second.step == 15


def _reference_update(trunk, head_list, features, labels, weights, learning_rate):
  """One SGD step written out by hand with Keras losses: the engine must match it."""
  references = {
      "digit": keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
      "parity": keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
      "box": keras.losses.MeanSquaredError(reduction="sum"),
  }
  variables = trunk.trainable_variables + [v for h in head_list for v in h.trainable_variables]
  with tf.GradientTape() as tape:
    shared = trunk(features)
    total = 0.0
    for head in head_list:
      weighted_sum = references[head.name](labels[head.name], head(shared),
                                           sample_weight=weights[head.name])
      total += head.weighting.value * weighted_sum / np.sum(weights[head.name])
  gradients = tape.gradient(total, variables)
  return [v.numpy() - learning_rate * g.numpy() for v, g in zip(variables, gradients)], float(total)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_one_step_equals_the_hand_written_weighted_multi_head_update(make_trainer, jit_compile):
  x, labels = engine.data.synthetic_arrays("train", 16)
  rng = np.random.default_rng(0)
  weights = {name: rng.uniform(0, 1, 16).astype(np.float32) for name in labels}
  weights["parity"][:5] = 0.0  # Partially labelled: absent for five examples.
  labels["parity"][:5] = -1
  trainer = make_trainer(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit_compile)
  trainer.build(tf.TensorSpec([None, 32], tf.float32))
  initial = [v.numpy() for v in trainer.model.trainable_variables]
  clean = dict(labels, parity=np.where(weights["parity"] > 0, labels["parity"], 0))
  expected, expected_loss = _reference_update(
      trainer.model.trunk, trainer.heads, x, clean, weights, 0.1)
  for variable, value in zip(trainer.model.trainable_variables, initial):
    variable.assign(value)  # The reference's forward pass must not have moved them.
  results = trainer.train(dataset_of(x, labels, weights, batch_size=16), steps=1)
  np.testing.assert_allclose(results["loss"], expected_loss, rtol=1e-5)
  for variable, value in zip(trainer.model.trainable_variables, expected):
    np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=1e-6)


def test_evaluate_is_a_weighted_mean_over_all_examples_not_a_mean_of_batch_means(make_trainer):
  x, labels = engine.data.synthetic_arrays("eval", 48)
  weights = {name: np.where(np.arange(48) < 16, 3.0, 0.5).astype(np.float32) for name in labels}
  trainer = make_trainer()
  results = trainer.evaluate(dataset_of(x, labels, weights, batch_size=16, repeat=False))
  logits = trainer.model(x)
  expected_total = 0.0
  for head in trainer.heads:
    if isinstance(head, heads.SoftmaxHead):
      per_example = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(
          labels[head.name], logits[head.name])
      accuracy = np.sum((np.argmax(logits[head.name], 1) == labels[head.name]) * weights[head.name])
      np.testing.assert_allclose(results[f"{head.name}/accuracy"],
                                 accuracy / weights[head.name].sum(), rtol=1e-6)
    else:
      per_example = keras.losses.MeanSquaredError(reduction=None)(labels[head.name], logits[head.name])
    expected = np.sum(per_example * weights[head.name]) / np.sum(weights[head.name])
    np.testing.assert_allclose(results[f"{head.name}/loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(results[f"{head.name}/weighted_loss"], head.weighting.value * expected,
                               rtol=1e-5)
    expected_total += head.weighting.value * expected
  np.testing.assert_allclose(results["loss"], expected_total, rtol=1e-5)


def test_learning_rate_schedules_drive_the_optimizer_and_are_reported(make_trainer, demo_batches):
  train, _ = demo_batches
  schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.5)
  trainer = make_trainer(optimizer=keras.optimizers.Adam(schedule), steps_per_loop=10)
  trainer.train(train, steps=20)
  assert int(trainer.optimizer.iterations) == 20
  np.testing.assert_allclose(float(trainer.optimizer.learning_rate), 0.01 * 0.5**2, rtol=1e-6)


def test_a_trunk_returning_named_features_feeds_each_head_its_input(make_trainer, demo_batches):
  train, evaluation = demo_batches
  inputs = keras.Input([32])
  trunk = keras.Model(inputs, {"wide": keras.layers.Dense(16, "relu")(inputs),
                               "narrow": keras.layers.Dense(4, "relu")(inputs)})
  head_list = [heads.SoftmaxHead("digit", 10, input="wide"),
               heads.SoftmaxHead("parity", 2, input="narrow"),
               heads.RegressionHead("box", 4, input="wide")]
  trainer = make_trainer(trunk=trunk, head_list=head_list)
  trainer.train(train, steps=5)
  assert trainer.heads[1].logits_layer.kernel.shape == (4, 2)
  assert set(trainer.evaluate(evaluation)) >= {"digit/accuracy", "parity/accuracy", "box/mae"}
  bad = [heads.SoftmaxHead("digit", 10, input="deep")]
  with pytest.raises(ValueError, match=r"'digit' reads input='deep'.*\['narrow', 'wide'\]"):
    make_trainer(model_dir=trainer.config.model_dir + "2", trunk=trunk, head_list=bad).predict(
        np.zeros([2, 32], np.float32))


def test_predict_returns_each_heads_outputs(make_trainer):
  trainer = make_trainer()
  x, _ = engine.data.synthetic_arrays("test", 5)
  outputs = trainer.predict(x)
  assert set(outputs) == {"digit", "parity", "box"}
  assert outputs["digit"]["probabilities"].shape == (5, 10)
  np.testing.assert_allclose(outputs["digit"]["probabilities"].sum(1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(outputs["digit"]["classes"],
                                outputs["digit"]["probabilities"].argmax(1))
  assert outputs["box"]["values"].shape == (5, 4)


def test_model_variables_hidden_from_checkpoints_are_saved_and_restored(make_trainer,
                                                                          demo_batches, tmp_path):
  class HiddenState(keras.layers.Layer):
    def __init__(self):
      super().__init__()
      self.blocks = [keras.layers.Dense(8), keras.layers.BatchNormalization()]

    def call(self, x, training=False):
      return self.blocks[1](self.blocks[0](x), training=training)

  trainer = make_trainer(model_dir=tmp_path / "run", trunk=HiddenState())
  trainer.train(demo_batches[0], steps=5)
  moving_mean = trainer.model.trunk.blocks[1].moving_mean.numpy()
  assert np.abs(moving_mean).max() > 0  # Training moved it.
  resumed = make_trainer(model_dir=tmp_path / "run", trunk=HiddenState())
  resumed.build(tf.TensorSpec([None, 32], tf.float32))
  np.testing.assert_array_equal(resumed.model.trunk.blocks[1].moving_mean.numpy(), moving_mean)


def test_a_finite_training_dataset_that_runs_out_saves_progress_and_says_so(make_trainer):
  x, labels = engine.data.synthetic_arrays("train", 64)
  trainer = make_trainer(steps_per_loop=10)
  with pytest.raises(ValueError, match=r"ended at global step 4, before reaching steps=20.*repeat"):
    trainer.train(dataset_of(x, labels, batch_size=16, repeat=False), steps=20)
  assert tf.train.latest_checkpoint(trainer.config.model_dir).endswith("ckpt-4")


def test_several_steps_per_program_train_exactly_as_one_per_program(make_trainer, tmp_path):
  """Groups of 3 in loops of 5 (3 + 2), and a dataset that ends inside a group:
  every batch it gave is trained, bit for bit as one step per program."""
  x, labels = engine.data.synthetic_arrays("train", 11 * 16)
  runs = {group: make_trainer(model_dir=tmp_path / f"group{group}", jit_compile=True,
                              steps_per_loop=5, steps_per_program=group) for group in (1, 3)}
  for trainer in runs.values():
    trainer.build(tf.TensorSpec([None, engine.data.NUM_FEATURES], tf.float32))
  for ours, theirs in zip(runs[3].model.variables, runs[1].model.variables):
    ours.assign(theirs)  # The same start.
  for group, trainer in runs.items():
    data = dataset_of(x, labels, batch_size=16, repeat=False, static=True)
    with pytest.raises(ValueError, match=r"ended at global step 11, before reaching steps=20"):
      trainer.train(data, steps=20)
    assert trainer.loops.steps_per_program(data.element_spec) == group
  assert tf.train.latest_checkpoint(runs[3].config.model_dir).endswith("ckpt-11")
  assert int(runs[3].optimizer.iterations.numpy()) == 11
  for ours, theirs in zip(runs[3].model.variables, runs[1].model.variables):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
  # A batch dimension that may vary: one step per program.
  assert runs[3].loops.steps_per_program(dataset_of(x, labels).element_spec) == 1
  # No more slots than a loop has steps.
  short = make_trainer(model_dir=tmp_path / "short", jit_compile=True, steps_per_loop=4,
                       steps_per_program=10)
  short.build(tf.TensorSpec([None, engine.data.NUM_FEATURES], tf.float32))
  static_spec = dataset_of(x, labels, batch_size=16, static=True).element_spec
  assert short.loops.steps_per_program(static_spec) == 4


def test_a_checkpoint_of_another_model_gives_a_clear_error(make_trainer, demo_batches, tmp_path):
  make_trainer(model_dir=tmp_path / "run").train(demo_batches[0], steps=2)
  with pytest.raises(ValueError, match=r"Cannot restore the checkpoint .*ckpt-2 into this model: "
                     r"model/trunk/dense/kernel \(the trunk\): \[32, 16\] in the checkpoint, "
                     r"\[32, 8\] in this model"):
    make_trainer(model_dir=tmp_path / "run", trunk=small_trunk(width=8)).train(
        demo_batches[0], steps=4)


def test_empty_evaluation_dataset_is_an_error(make_trainer):
  x, labels = engine.data.synthetic_arrays("eval", 16)
  empty = dataset_of(x, labels, repeat=False).take(0)
  with pytest.raises(ValueError, match="evaluation dataset is empty"):
    make_trainer().evaluate(empty)


def test_config_errors_name_the_field_and_value():
  with pytest.raises(ValueError, match=r"steps_per_loop must be an integer >= 1; received 0"):
    engine.Config(model_dir="x", steps_per_loop=0)
  with pytest.raises(ValueError, match=r"checkpoint_every .* received -5"):
    engine.Config(model_dir="x", checkpoint_every=-5)
  with pytest.raises(ValueError, match=r"model_dir"):
    engine.Config(model_dir="")


def test_each_evaluation_starts_from_reset_metrics(make_trainer, demo_batches):
  train, evaluation = demo_batches
  x, labels = engine.data.synthetic_arrays("test", 64)
  other = dataset_of(x, labels, batch_size=32, repeat=False)
  trainer = make_trainer()
  trainer.train(train, steps=5)
  first = trainer.evaluate(evaluation)
  trainer.evaluate(other)
  assert trainer.evaluate(evaluation) == first


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_readable_one(make_trainer, tmp_path,
                                                                           demo_batches, caplog):
  first = make_trainer(model_dir=tmp_path / "run", checkpoint_every=4, max_checkpoints=5)
  first.train(demo_batches[0], steps=4)
  weights_at_4 = [v.numpy() for v in first.model.variables]
  first.train(demo_batches[0], steps=8)
  data_file = tf.io.gfile.glob(str(tmp_path / "run" / "ckpt-8.data-*"))[0]
  with open(data_file, "r+b") as handle:  # A crash in the middle of writing.
    handle.truncate(os.path.getsize(data_file) // 3)
  second = make_trainer(model_dir=tmp_path / "run", checkpoint_every=4, max_checkpoints=5)
  with caplog.at_level("WARNING"):
    second.build(tf.TensorSpec([None, 32], tf.float32))
  assert second.step == 4
  assert re.search(r"Checkpoint .*ckpt-8 is damaged and was skipped", caplog.text)
  for restored, saved in zip(second.model.variables, weights_at_4):
    np.testing.assert_array_equal(restored.numpy(), saved)
  assert not np.array_equal(first.model.variables[0].numpy(), weights_at_4[0])
  second.train(demo_batches[0], steps=8)  # Redoes steps 5-8 and overwrites the damaged one.
  assert second.step == 8


def test_an_unwritable_model_dir_is_refused_when_the_trainer_is_made(make_trainer, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match=r"model_dir '.*a_file/run' is not a writable directory"):
    make_trainer(model_dir=blocker / "run")


def test_full_training_metrics_equal_an_evaluation_of_the_same_batches(make_trainer):
  """train_metrics="full" updates every head's Keras metrics in every step: at a
  learning rate of 0, a loop's metrics are those of evaluating its batches."""
  x, labels = engine.data.synthetic_arrays("train", 64)
  weights = {"parity": np.where(np.arange(64) % 3 == 0, 0.0, 1.0).astype(np.float32)}
  data = dataset_of(x, labels, weights, batch_size=16, repeat=False)
  trainer = make_trainer(optimizer=keras.optimizers.SGD(0.0), steps_per_loop=4,
                         train_metrics="full")
  trained = trainer.train(data.repeat(), steps=4)
  evaluated = trainer.evaluate(data)
  assert set(trained) == set(evaluated)
  assert {"digit/top5_accuracy", "digit/ece", "parity/nll", "box/rmse"} <= set(trained)
  for key in evaluated:
    np.testing.assert_allclose(trained[key], evaluated[key], rtol=2e-5, atol=1e-6, err_msg=key)
  basic = make_trainer(model_dir=trainer.config.model_dir + "-basic", steps_per_loop=4)
  assert set(basic.train(data.repeat(), steps=4)) == {
      "loss", "digit/loss", "digit/weighted_loss", "digit/accuracy", "parity/loss",
      "parity/weighted_loss", "parity/accuracy", "box/loss", "box/weighted_loss", "box/mae"}


def test_train_metrics_is_checked():
  with pytest.raises(ValueError, match=r"train_metrics must be one of \('basic', 'full'\); "
                                       r"received 'all'"):
    engine.Config(model_dir="x", train_metrics="all")
