"""Mixed precision: the same accuracy as float32, and loss scaling that skips overflows."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import engine
import heads


@pytest.fixture(autouse=True)
def float32_afterwards():
  yield
  keras.mixed_precision.set_dtype_policy("float32")


def _demo_trainer(tmp_path, precision, scope=None, **config):
  """The demo's model; layers are made after the precision is set."""
  engine.set_precision(precision)
  config.setdefault("steps_per_loop", 100)
  config.setdefault("head_diagnostics", False)  # A second XLA program; not under test here.
  def make():
    return engine.Trainer(
        trunk=keras.Sequential([keras.layers.Dense(128, activation="relu"),
                                keras.layers.Dense(128, activation="relu")]),
        heads=heads.parse_heads(engine.data.DEMO_HEADS),
        optimizer=keras.optimizers.AdamW(3e-3),
        config=engine.Config(model_dir=str(tmp_path / precision),
                             checkpoint_every=10_000, seed=0, precision=precision, **config))
  if scope is None:
    return make()
  with scope.scope():
    return make()


def test_mixed_precisions_train_the_demo_within_one_point_of_float32(tmp_path):
  """Compared on the metrics of the last loop: 100 steps, 12,800 examples.

  (An evaluation would compile a third XLA program per precision.) At step 500 the three
  were within 0.0016 of each other in accuracy, float32's digit accuracy 0.945.
  """
  train = engine.data.synthetic("train", 128, num_examples=16384)
  results = {}
  for precision in ("float32", "mixed_float16", "mixed_bfloat16"):
    trainer = _demo_trainer(tmp_path, precision)
    assert trainer.model.trunk.layers[0].compute_dtype == (
        "float32" if precision == "float32" else precision.split("_")[1])
    assert all(v.dtype == "float32" for v in trainer.model.trainable_variables)
    results[precision] = trainer.train(train, steps=500)
  for precision in ("mixed_float16", "mixed_bfloat16"):
    for head in ("digit", "parity"):
      assert abs(results[precision][f"{head}/accuracy"] - results["float32"][f"{head}/accuracy"]) <= 0.01, (
          results,
          precision, head, results[precision][f"{head}/accuracy"], results["float32"][f"{head}/accuracy"])
    assert results[precision]["box/loss"] <= 1.2 * results["float32"]["box/loss"]
  assert results["float32"]["digit/accuracy"] > 0.9


def _overflow_data(bad_rows):
  """Three batches of 16; the second has features too large for float16 in `bad_rows`."""
  x, labels = engine.data.synthetic_arrays("train", 48)
  x[16 + np.asarray(bad_rows)] = 1e6
  return tf.data.Dataset.from_tensor_slices((x, labels)).batch(16, drop_remainder=True)


def _weights(trainer):
  return [v.numpy() for v in trainer.model.trainable_variables]


@pytest.mark.parametrize("replicas", [1, 2])
def test_an_overflow_is_skipped_the_scale_halved_and_training_goes_on(tmp_path, replicas):
  scope = None
  if replicas == 2:
    scope = engine.create_strategy(engine.Config(model_dir="unused", strategy="mirrored",
                                                 num_cpu_devices=2))
  # Features too large for float16 overflow the forward pass: the losses are
  # not finite either, which the default policy ("raise") would stop on.
  trainer = _demo_trainer(tmp_path, "mixed_float16", scope, steps_per_loop=1, nonfinite="skip")
  assert trainer.strategy.num_replicas_in_sync == replicas
  # With two replicas the overflow is in replica 1's half only: replica 0's own
  # gradients are finite, yet the step must be skipped on both.
  iterator_data = _overflow_data(bad_rows=[12] if replicas == 2 else [3])
  trainer.train(iterator_data.take(1), steps=1)
  scale, before = float(trainer.optimizer.dynamic_scale.numpy()), _weights(trainer)
  trainer.train(iterator_data.skip(1).take(1), steps=2)
  assert float(trainer.optimizer.dynamic_scale.numpy()) == scale / 2
  assert int(trainer.skipped_steps.numpy()) == 1 and trainer.step == 2
  for a, b in zip(before, _weights(trainer)):
    np.testing.assert_array_equal(a, b)
  if replicas == 2:
    for variable in trainer.model.trainable_variables:
      local = trainer.strategy.experimental_local_results(variable.value)
      np.testing.assert_array_equal(local[0].numpy(), local[1].numpy())
  trainer.train(iterator_data.skip(2), steps=3)
  assert int(trainer.skipped_steps.numpy()) == 1
  assert any(not np.array_equal(a, b) for a, b in zip(before, _weights(trainer)))
  accumulator = event_accumulator.EventAccumulator(os.path.join(trainer.config.model_dir, "train"))
  accumulator.Reload()
  scales = {e.step: float(tf.make_ndarray(e.tensor_proto))
            for e in accumulator.Tensors("Overview/loss_scale")}
  skipped = {e.step: float(tf.make_ndarray(e.tensor_proto))
             for e in accumulator.Tensors("Overview/skipped_steps")}
  assert scales[2] == scale / 2 and skipped == {1: 0.0, 2: 1.0, 3: 1.0}


def test_a_loss_scale_overflow_is_routine_even_under_the_raise_policy(tmp_path):
  trainer = _demo_trainer(tmp_path, "mixed_float16", steps_per_loop=5)
  train = engine.data.synthetic("train", 32, num_examples=256)
  trainer.build(tf.TensorSpec([None, engine.data.NUM_FEATURES], tf.float32))
  start = _weights(trainer)
  trainer.optimizer.dynamic_scale.assign(2.0**40)  # Gradients overflow float16; losses do not.
  trainer.train(train, steps=1)
  assert int(trainer.skipped_steps.numpy()) == 1 and trainer.step == 1
  assert float(trainer.optimizer.dynamic_scale.numpy()) == 2.0**39
  assert all(np.array_equal(a, b) for a, b in zip(start, _weights(trainer)))
  trainer.train(train, steps=60)  # The scale comes down until steps are applied again.
  assert trainer.step == 60 and 1 < int(trainer.skipped_steps.numpy()) < 60
  assert not all(np.array_equal(a, b) for a, b in zip(start, _weights(trainer)))
  assert list(trainer.nonfinite_losses.numpy()) == [0, 0, 0]


def test_layers_made_before_the_precision_was_set_are_refused(tmp_path):
  trunk = keras.Sequential([keras.layers.Dense(8)])
  with pytest.raises(ValueError, match=r"precision='mixed_float16', but these layers were created "
                                       r"with another dtype policy: \['sequential.* \(float32\)'"):
    engine.Trainer(trunk=trunk, heads=[heads.SoftmaxHead("digit", 10)],
                   optimizer=keras.optimizers.Adam(),
                   config=engine.Config(model_dir=str(tmp_path), precision="mixed_float16"))


def test_precision_names_are_checked():
  with pytest.raises(ValueError, match=r"--precision must be one of"):
    engine.set_precision("float8")
  with pytest.raises(ValueError, match=r"precision must be one of"):
    engine.Config(model_dir="x", precision="half")
  with pytest.raises(ValueError, match=r"on TPUs use 'mixed_bfloat16'"):
    engine.Config(model_dir="x", precision="mixed_float16", strategy="tpu")
