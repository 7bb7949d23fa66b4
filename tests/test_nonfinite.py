"""Non-finite losses: "raise" names the heads and the step, "skip" counts and goes on.

Either way the bad step leaves the weights untouched, and no checkpoint with
non-finite weights is written.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import engine
from engine import update as update_lib
from tests.conftest import dataset_of


def _batches(bad_batch, how):
  """Batches of 16; in batch `bad_batch`, the box target overflows MSE, or a feature
  overflows the trunk (finite, so it passes the feature check; the activations are not)."""
  x, labels = engine.data.synthetic_arrays("train", 96)
  rows = slice(16 * bad_batch, 16 * bad_batch + 2)
  if how == "box":
    labels["box"][rows] = 1e30  # Finite, so it passes the label checks; its square is not.
  else:
    x[rows, :] = 3e38
  return dataset_of(x, labels, batch_size=16, repeat=False)


def _weights(trainer):
  return [v.numpy() for v in trainer.model.trainable_variables]


@pytest.mark.parametrize("how,heads", [("box", r"\['box'\]"),
                                       ("features", r"\['digit', 'parity', 'box'\]")])
def test_raise_names_the_heads_and_step_and_saves_only_finite_weights(make_trainer, how, heads):
  trainer = make_trainer(steps_per_loop=10)
  with pytest.raises(ValueError, match=rf"At step 3, the loss of head\(s\) {heads} became NaN "
                                       r"or infinite\. The step was not applied and training "
                                       r"stopped at step 2 \(saved\)"):
    trainer.train(_batches(2, how), steps=6)
  assert trainer.step == 2
  assert all(np.all(np.isfinite(w)) for w in _weights(trainer))
  path = tf.train.latest_checkpoint(trainer.config.model_dir)
  assert path.endswith("ckpt-2")
  reader = tf.train.load_checkpoint(path)
  for name, _ in tf.train.list_variables(path):
    if "iterator" in name:  # The input position: not a number.
      continue
    value = reader.get_tensor(name)
    if np.issubdtype(np.asarray(value).dtype, np.floating):
      assert np.all(np.isfinite(value)), name


def test_skip_leaves_the_weights_untouched_counts_the_head_and_goes_on(make_trainer):
  trainer = make_trainer(steps_per_loop=1, nonfinite="skip")
  data = _batches(2, "box")
  trainer.train(data.take(2), steps=2)
  before = _weights(trainer)
  trainer.train(data.skip(2).take(1), steps=3)
  assert trainer.step == 3 and int(trainer.skipped_steps.numpy()) == 1
  assert list(trainer.nonfinite_losses.numpy()) == [0, 0, 1]  # digit, parity, box
  for a, b in zip(before, _weights(trainer)):
    np.testing.assert_array_equal(a, b)
  trainer.train(data.skip(3), steps=6)
  assert trainer.step == 6 and int(trainer.skipped_steps.numpy()) == 1
  accumulator = event_accumulator.EventAccumulator(os.path.join(trainer.config.model_dir, "train"))
  accumulator.Reload()
  counts = {e.step: float(tf.make_ndarray(e.tensor_proto))
            for e in accumulator.Tensors("box/nonfinite_steps")}
  assert 2 not in counts and counts[3] == 1.0 and counts[6] == 1.0  # Written once non-zero.


def test_skipped_steps_stay_out_of_the_reported_loss(make_trainer):
  trainer = make_trainer(steps_per_loop=6, nonfinite="skip")
  results = trainer.train(_batches(2, "box"), steps=6)
  assert int(trainer.skipped_steps.numpy()) == 1
  assert np.isfinite(results["loss"]) and np.isfinite(results["box/loss"])
  # The mean of the five applied steps' losses: well below the 1e60 of the skipped one.
  assert results["box/loss"] < 10.0


def test_too_many_skipped_steps_in_a_row_stop_the_run(make_trainer):
  x, labels = engine.data.synthetic_arrays("train", 96)
  labels["box"][32:] = 1e30  # From the third batch on, every step is skipped.
  trainer = make_trainer(steps_per_loop=6, nonfinite="skip", max_consecutive_skips=3)
  with pytest.raises(ValueError, match=r"At step 5, 3 steps in a row had been skipped as NaN "
                     r"or infinite \(the last: the loss of head\(s\) \['box'\]\)\. Training "
                     r"stopped at step 4 \(saved\)\..*--max_consecutive_skips"):
    trainer.train(dataset_of(x, labels, batch_size=16), steps=6)
  assert int(trainer.skipped_steps.numpy()) == 3
  assert tf.train.latest_checkpoint(trainer.config.model_dir).endswith("ckpt-4")


def test_nonfinite_policy_is_checked():
  with pytest.raises(ValueError, match=r"nonfinite must be one of \('raise', 'skip'\); "
                                       r"received 'ignore'"):
    engine.Config(model_dir="x", nonfinite="ignore")


class _NanGradientAtSeven(keras.layers.Layer):
  """The identity, with a NaN gradient (and a finite loss) for a batch whose first
  feature peaks at exactly 7: r - stop_gradient(r) is 0, and d/dv of
  r = sqrt((v * 0)^2) is inf * 0."""

  def build(self, input_shape):
    self.v = self.add_weight(shape=(), initializer="ones", name="v")

  def call(self, x):
    seven = tf.cast(tf.reduce_max(x[:, 0]) == 7.0, x.dtype)
    r = tf.sqrt(tf.square(self.v * (1.0 - seven)))
    return x + (r - tf.stop_gradient(r))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_nonfinite_gradients_under_finite_losses_raise_at_their_step(make_trainer, jit_compile):
  """No norm is computed in a default step: the plain sums of the gradients must
  still catch a NaN gradient that no loss shows."""
  trunk = keras.Sequential([_NanGradientAtSeven(), keras.layers.Dense(16, activation="relu")])
  trainer = make_trainer(trunk=trunk, steps_per_loop=10, jit_compile=jit_compile)
  x, labels = engine.data.synthetic_arrays("train", 96)
  x[32, 0] = 7.0  # In batch 2 (of 16): step 3.
  data = dataset_of(x, labels, batch_size=16, repeat=False)
  trainer.train(data.take(2), steps=2)
  before = _weights(trainer)
  with pytest.raises(ValueError, match=r"At step 3, the gradients \(every head's loss was "
                                       r"finite\) became NaN or infinite\. The step was not "
                                       r"applied and training stopped at step 2 \(saved\)"):
    trainer.train(data.skip(2), steps=6)
  assert trainer.step == 2
  for a, b in zip(before, _weights(trainer)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 2, 3])  # A small gradient, another small one, a large one.
def test_the_finiteness_sum_sees_any_bad_value_in_small_and_large_gradients(bad, where):
  rng = np.random.default_rng(where)
  shapes = [(7,), (64, 10), (3, 5), (update_lib.SMALL + 1,)]
  values = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
  if bad is not None:
    values[where].flat[-1] = bad
  total = update_lib.finiteness_sum([tf.constant(v) for v in values]).numpy()
  if bad is None:
    np.testing.assert_allclose(total, sum(float(v.sum()) for v in values), rtol=1e-4)
  else:
    assert not np.isfinite(total)
