"""Bad batches: each gets an error naming the head, before any step runs."""


import numpy as np
import pytest
import tensorflow as tf

import engine
import heads
from tests.conftest import dataset_of


def _batches(mutate, weights=None):
  x, labels = engine.data.synthetic_arrays("train", 64)
  mutate(labels)
  return dataset_of(x, labels, weights)


def _assert_untouched(trainer):
  assert trainer.step == 0
  assert tf.train.latest_checkpoint(trainer.config.model_dir) is None


@pytest.mark.parametrize("mutate,message", [
    (lambda labels: labels.pop("parity"),
     r"Head 'parity' has no labels in the batch: expected keys \['box', 'digit', 'parity'\], "
     r"received \['box', 'digit'\]"),
    (lambda labels: labels.update(color=np.zeros(64, np.int64)),
     r"labels key 'color' matches no head: expected keys \['box', 'digit', 'parity'\]"),
    (lambda labels: labels.update(digit=np.zeros((64, 3), np.int64)),
     r"Head 'digit': labels must be integer class ids of shape \[batch\] in \[0, 10\) or floats "
     r"of shape \[batch, 10\] in \[0, 1\]; received int64 of shape \[batch, 3\]\."),
    (lambda labels: labels.update(box=np.zeros((64, 5), np.float32)),
     r"Head 'box': labels must be floats of shape \[batch, 4\]; received float32 of shape "
     r"\[batch, 5\]\."),
    (lambda labels: labels.update(digit=labels["digit"].astype(np.float32)),
     r"Head 'digit': labels must be integer class ids .*; received float32 of shape \[batch\]\."),
    (lambda labels: labels.update(box=labels["box"].astype(np.int64)),
     r"Head 'box': labels must be floats of shape \[batch, 4\]; received int64"),
])
def test_structural_errors_are_raised_before_anything_is_built(make_trainer, mutate, message):
  trainer = make_trainer()
  with pytest.raises(ValueError, match=message):
    trainer.train(_batches(mutate), steps=5)
  _assert_untouched(trainer)


def test_unknown_sample_weight_key_names_it(make_trainer):
  x, labels = engine.data.synthetic_arrays("train", 64)
  dataset = dataset_of(x, labels, {"colour": np.ones(64, np.float32)})
  with pytest.raises(ValueError, match=r"sample_weights key 'colour' matches no head"):
    make_trainer().train(dataset, steps=5)


# Each bound once, each with and without XLA: one check covers both (pairs, not the
# product: every case is a trainer of its own, compiled under XLA when asked).
@pytest.mark.parametrize("bad_label,jit_compile", [(10, True), (-1, False)])
def test_out_of_range_class_ids_raise_naming_the_head_also_under_xla(make_trainer, jit_compile,
                                                                     bad_label):
  def mutate(labels):
    labels["digit"][3] = bad_label
  trainer = make_trainer(jit_compile=jit_compile)
  with pytest.raises(ValueError,
                     match=rf"Head 'digit': class ids must be in \[0, 10\); received values from "
                           rf"{min(bad_label, 0)} to {max(bad_label, 9)}\."):
    trainer.train(_batches(mutate), steps=5)
  assert trainer.step == 0  # The bad batch is the first: no update was applied.
  assert all(np.all(np.isfinite(v.numpy())) for v in trainer.model.variables)


def test_out_of_range_placeholders_of_absent_labels_are_accepted(make_trainer):
  x, labels = engine.data.synthetic_arrays("train", 64)
  weights = {"parity": np.where(np.arange(64) % 2 == 0, 1.0, 0.0).astype(np.float32)}
  labels["parity"][1::2] = -1  # "No parity label here."
  trainer = make_trainer()
  results = trainer.train(dataset_of(x, labels, weights), steps=5)
  assert trainer.step == 5 and np.isfinite(results["parity/loss"])


def test_evaluate_checks_labels_too(make_trainer):
  x, labels = engine.data.synthetic_arrays("eval", 32)
  labels["parity"][0] = 2
  with pytest.raises(ValueError, match=r"Head 'parity': class ids must be in \[0, 2\)"):
    make_trainer().evaluate(dataset_of(x, labels, repeat=False))


def test_elements_that_are_not_feature_label_tuples_are_refused(make_trainer):
  dataset = tf.data.Dataset.from_tensor_slices(np.zeros((8, 32), np.float32)).batch(4)
  with pytest.raises(ValueError, match=r"\(features, labels\) or \(features, labels, sample_weights\)"):
    make_trainer().train(dataset, steps=1)


def test_soft_targets_outside_the_unit_interval_are_refused(make_trainer):
  def mutate(labels):
    targets = np.eye(10, dtype=np.float32)[labels["digit"]]
    targets[5, 0] = 1.5
    labels["digit"] = targets
  with pytest.raises(ValueError, match=r"Head 'digit': labels must be finite and in \[0, 1\]; "
                                       r"received values from 0 to 1.5\."):
    make_trainer().train(_batches(mutate), steps=5)


def test_a_nan_regression_target_is_refused_unless_its_weight_is_zero(make_trainer):
  def mutate(labels):
    labels["box"][2, 1] = np.nan
  with pytest.raises(ValueError, match=r"Head 'box': labels must be finite; received values from"):
    make_trainer().train(_batches(mutate), steps=5)
  weights = {"box": np.where(np.arange(64) == 2, 0.0, 1.0).astype(np.float32)}
  trainer = make_trainer(model_dir=make_trainer().config.model_dir + "-weighted")
  results = trainer.train(_batches(mutate, weights), steps=5)
  assert np.isfinite(results["box/loss"])


def _sequence_trainer(make_trainer, **kwargs):
  head_list = [heads.SequenceSoftmaxHead("tags", num_classes=4, **kwargs)]
  return make_trainer(head_list=head_list)


def test_sequence_labels_accept_the_ignore_label_and_refuse_other_ids(make_trainer):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 6, 3)).astype(np.float32)
  labels = rng.integers(0, 4, size=(32, 6))
  labels[:, 4:] = -1
  trainer = _sequence_trainer(make_trainer)
  trainer.train(dataset_of(x, {"tags": labels}), steps=2)
  labels[7, 2] = 4
  with pytest.raises(ValueError, match=r"Head 'tags': class ids must be in \[0, 4\); "
                                       r"received values from 0 to 4\."):
    trainer.train(dataset_of(x, {"tags": labels}), steps=4)
  weights = {"tags": np.ones((32, 5), np.float32)}  # Neither [batch] nor [batch, time=6].
  with pytest.raises(ValueError, match=r"Head 'tags': sample weights must have shape "
                                       r"\[batch\] or \[batch, 6\]; received shape \[batch, 5\]"):
    trainer.train(dataset_of(x, {"tags": labels}, weights), steps=4)


def test_multi_hot_targets_must_be_zero_or_one(make_trainer):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(32, 5)).astype(np.float32)
  labels = (rng.uniform(size=(32, 3)) < 0.5).astype(np.int64)
  labels[4, 1] = 2
  trainer = make_trainer(head_list=[heads.SigmoidHead("tags", num_classes=3)])
  with pytest.raises(ValueError, match=r"Head 'tags': class ids must be in \[0, 2\)"):
    trainer.train(dataset_of(x, {"tags": labels}), steps=2)


@pytest.mark.parametrize("bad_value,jit_compile", [(np.nan, True), (np.inf, False)])
def test_nan_or_inf_features_raise_naming_the_features(make_trainer, bad_value, jit_compile):
  x, labels = engine.data.synthetic_arrays("train", 64)
  x[20:23, 5] = bad_value  # In the second batch of 16.
  trainer = make_trainer(jit_compile=jit_compile, steps_per_loop=4, checkpoint_every=1)
  with pytest.raises(ValueError, match=r"Features 'features' hold 3 NaN or infinite values in "
                                       r"a batch; expected finite floats"):
    trainer.train(dataset_of(x, labels), steps=4)
  assert trainer.step == 1  # The first batch was trained, and saved; the bad one never ran.
  assert tf.train.latest_checkpoint(trainer.config.model_dir).endswith("ckpt-1")
  assert all(np.all(np.isfinite(v.numpy())) for v in trainer.model.variables)


def test_a_partial_final_batch_is_trained_and_evaluated_exactly(make_trainer):
  x, labels = engine.data.synthetic_arrays("eval", 100)
  trainer = make_trainer()
  trainer.train(dataset_of(x, labels, batch_size=32), steps=8)  # 32, 32, 32, 4, 32, ...
  assert trainer.step == 8
  results = trainer.evaluate(dataset_of(x, labels, batch_size=32, repeat=False))
  predicted = trainer.predict(x)
  assert results["digit/accuracy"] == pytest.approx(
      np.mean(predicted["digit"]["classes"] == labels["digit"]), abs=1e-6)  # All 100.
  mse = np.mean((predicted["box"]["values"] - labels["box"]) ** 2)
  assert results["box/loss"] == pytest.approx(mse, rel=1e-5)


def _mid_loop_batches(bad, static=False):
  """Batches of 16 with one bad value in the fourth batch (step 4)."""
  x, labels = engine.data.synthetic_arrays("train", 128)
  weights = {"parity": np.ones(128, np.float32)}
  row = 3 * 16 + 5
  if bad == "label":
    labels["digit"][row] = 12
  elif bad == "feature":
    x[row, 7] = np.nan
  else:
    weights["parity"][row] = -1.0
  return dataset_of(x, labels, weights, static=static)


@pytest.mark.parametrize("bad,jit_compile,steps_per_program,message", [
    ("label", True, 1, r"At step 4, a batch failed a check: Head 'digit': class ids must be in "
                    r"\[0, 10\); received values from 0 to 12\. The step was not applied and "
                    r"training stopped at step 3 \(saved\)\."),
    # Step 4 in the middle of a program of 5 steps (the batches static-shaped).
    ("feature", True, 5, r"At step 4, a batch failed a check: Features 'features' hold 1 NaN"),
    ("label", False, 1, r"At step 4, .*Head 'digit': class ids must be in \[0, 10\)"),
    ("feature", False, 1, r"At step 4, a batch failed a check: Features 'features' hold 1 NaN or "
                      r"infinite values in a batch; expected finite floats"),
    ("weight", False, 1, r"At step 4, a batch failed a check: Head 'parity': sample weights must be "
                     r"finite and >= 0; received 1 bad values, from -1 to 1\."),
])
def test_a_bad_batch_in_the_middle_of_a_loop_stops_it_with_the_weights_of_the_step_before(
    make_trainer, tmp_path, bad, jit_compile, steps_per_program, message):
  reference = make_trainer(model_dir=tmp_path / "reference", jit_compile=jit_compile,
                           steps_per_loop=8, steps_per_program=1)
  trainer = make_trainer(model_dir=tmp_path / "run", jit_compile=jit_compile, steps_per_loop=8,
                         steps_per_program=steps_per_program)
  static = steps_per_program > 1
  for each in (reference, trainer):
    each.build(tf.TensorSpec([None, engine.data.NUM_FEATURES], tf.float32))
  for ours, theirs in zip(trainer.model.variables, reference.model.variables):
    ours.assign(theirs)
  reference.train(_mid_loop_batches(bad, static).take(3), steps=3)  # The three clean batches.
  with pytest.raises(ValueError, match=message):
    trainer.train(_mid_loop_batches(bad, static), steps=8)  # One loop of 8 steps.
  if static:
    assert trainer.loops.steps_per_program(_mid_loop_batches(bad, static).element_spec) == 5
  assert trainer.step == 3 and int(trainer.optimizer.iterations.numpy()) == 3
  for ours, theirs in zip(trainer.model.variables, reference.model.variables):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
  assert tf.train.latest_checkpoint(trainer.config.model_dir).endswith("ckpt-3")
