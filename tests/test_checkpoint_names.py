"""Checkpoints keyed by name: heads in another order, new and removed heads, another
optimizer, and warm starts from runs with other heads."""

import logging as std_logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
import heads

# Two heads of the same shape: by position their weights would restore swapped.
_TWO_LABELS = {"p": lambda y: y["parity"], "q": lambda y: (y["digit"] >= 5).astype(np.int64)}


def _two_head_data(split, count, batch_size, repeat):
  x, y = engine.data.synthetic_arrays(split, count)
  labels = {name: label(y) for name, label in _TWO_LABELS.items()}
  dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(batch_size, drop_remainder=True)
  return dataset.repeat() if repeat else dataset


def _pq_trainer(make_trainer, model_dir, names=("p", "q"), optimizer=None, **config):
  return make_trainer(model_dir=model_dir, optimizer=optimizer,
                      head_list=[heads.SoftmaxHead(name, 2) for name in names], **config)


@pytest.fixture(scope="module")
def pq_run(tmp_path_factory):
  """Heads p, q trained and evaluated: (model_dir, results)."""
  model_dir = str(tmp_path_factory.mktemp("pq"))
  trainer = engine.Trainer(
      trunk=keras.Sequential([keras.layers.Dense(16, activation="relu")]),
      heads=[heads.SoftmaxHead("p", 2), heads.SoftmaxHead("q", 2)],
      optimizer=keras.optimizers.Adam(1e-2),
      config=engine.Config(model_dir=model_dir, steps_per_loop=20, seed=0, jit_compile=False,
                           head_diagnostics=False))
  trainer.train(_two_head_data("train", 512, 32, True), steps=60)
  return model_dir, trainer.evaluate(_two_head_data("eval", 256, 64, False))


def test_heads_in_another_order_restore_by_name(pq_run, make_trainer):
  model_dir, results = pq_run
  swapped = _pq_trainer(make_trainer, model_dir, names=("q", "p"))
  again = swapped.evaluate(_two_head_data("eval", 256, 64, False))
  assert again["p/accuracy"] == pytest.approx(results["p/accuracy"])
  assert again["q/accuracy"] == pytest.approx(results["q/accuracy"])
  assert results["p/accuracy"] > 0.6 and results["q/accuracy"] > 0.6  # Trained, not chance (0.5).


def test_the_checkpoint_lists_head_and_layer_names(pq_run):
  model_dir, _ = pq_run
  names = {name for name, _ in tf.train.list_variables(model_dir)}
  for expected in ("model/trunk/dense/kernel", "model/heads/p/logits/kernel",
                   "model/heads/q/logits/bias", "optimizer/slots/heads/q/logits/kernel/momentums",
                   "optimizer/slots/trunk/dense/bias/velocities", "optimizer/iterations"):
    assert f"{expected}/.ATTRIBUTES/VARIABLE_VALUE" in names
  assert not [name for name in names if "_trainable_variables" in name or "/_variables/" in name]


def _kernel(trainer, head):
  head, = [h for h in trainer.heads if h.name == head]
  kernel, = [v for v in head.variables if v.name == "kernel"]
  return kernel.numpy()


def test_a_new_head_starts_from_its_initialiser_with_a_warning(pq_run, make_trainer, caplog):
  model_dir, _ = pq_run
  trainer = _pq_trainer(make_trainer, model_dir, names=("p", "q", "r"))
  with caplog.at_level(std_logging.WARNING):
    trainer.build(tf.TensorSpec([None, 32], tf.float32))
  assert "Heads ['r'] are not in the checkpoint" in caplog.text
  reader = tf.train.load_checkpoint(model_dir)
  np.testing.assert_array_equal(
      _kernel(trainer, "p"), reader.get_tensor("model/heads/p/logits/kernel/.ATTRIBUTES/VARIABLE_VALUE"))
  fresh = _pq_trainer(make_trainer, None, names=("p", "q", "r"))
  fresh.build(tf.TensorSpec([None, 32], tf.float32))
  np.testing.assert_array_equal(_kernel(trainer, "r"), _kernel(fresh, "r"))  # Same seed.


def test_a_removed_head_is_refused_unless_partial(pq_run, make_trainer, caplog):
  model_dir, results = pq_run
  spec = tf.TensorSpec([None, 32], tf.float32)
  with pytest.raises(ValueError, match=r"the checkpoint has heads this model lacks: \['q'\].*"
                     r"partial_restore"):
    _pq_trainer(make_trainer, model_dir, names=("p",)).build(spec)
  partial = _pq_trainer(make_trainer, model_dir, names=("p",), partial_restore=True)
  with caplog.at_level(std_logging.WARNING):
    again = partial.evaluate(_two_head_data("eval", 256, 64, False).map(
        lambda x, y: (x, {"p": y["p"]})))
  assert "its heads ['q'] are left out" in caplog.text
  assert again["p/accuracy"] == pytest.approx(results["p/accuracy"])


def test_another_optimizer_restores_the_model_and_starts_afresh(pq_run, make_trainer, caplog):
  model_dir, _ = pq_run
  trainer = _pq_trainer(make_trainer, model_dir, optimizer=keras.optimizers.SGD(0.1,
                                                                                 momentum=0.9))
  with caplog.at_level(std_logging.WARNING):
    trainer.build(tf.TensorSpec([None, 32], tf.float32))
  assert "written by another optimizer (its slots: ['momentums', 'velocities']; this one's: " \
         "['momentums'])" in caplog.text
  assert trainer.step == 60 and int(trainer.optimizer.iterations.numpy()) == 60
  reader = tf.train.load_checkpoint(model_dir)
  np.testing.assert_array_equal(
      _kernel(trainer, "q"), reader.get_tensor("model/heads/q/logits/kernel/.ATTRIBUTES/VARIABLE_VALUE"))
  momentums = [v for v in trainer.optimizer.variables if "momentum" in v.name]
  assert momentums and all(not np.any(v.numpy()) for v in momentums)  # Fresh slots.


def test_a_warm_start_takes_the_trunk_of_a_run_with_other_heads(pq_run, make_trainer):
  model_dir, _ = pq_run
  trainer = make_trainer(init_checkpoint=model_dir)  # The demo heads: digit, parity, box.
  trainer.build(tf.TensorSpec([None, 32], tf.float32))
  reader = tf.train.load_checkpoint(model_dir)
  assert trainer.step == 0
  np.testing.assert_array_equal(
      trainer.model.trunk.variables[0].numpy(),
      reader.get_tensor("model/trunk/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"))
  assert int(trainer.optimizer.iterations.numpy()) == 0


def test_a_warm_start_names_what_does_not_fit(pq_run, make_trainer):
  model_dir, _ = pq_run
  spec = tf.TensorSpec([None, 32], tf.float32)
  with pytest.raises(ValueError, match=r"model/trunk/dense/kernel \(the trunk\): \[32, 16\] in "
                     r"the checkpoint, \[32, 8\] in this model"):
    make_trainer(init_checkpoint=model_dir, trunk=keras.Sequential([keras.layers.Dense(8)])
                 ).build(spec)
  with pytest.raises(ValueError, match=r"model/heads/digit/logits/kernel is not in it"):
    make_trainer(init_checkpoint=model_dir, init_modules=("trunk", "digit")).build(spec)
  with pytest.raises(ValueError, match=r"init_modules names 'tail'"):
    make_trainer(init_checkpoint=model_dir, init_modules=("tail",)).build(spec)


def test_a_warm_start_does_nothing_once_the_run_has_a_checkpoint(pq_run, make_trainer, tmp_path,
                                                                 demo_batches):
  model_dir, _ = pq_run
  first = make_trainer(model_dir=tmp_path / "own", init_checkpoint=model_dir)
  first.train(demo_batches[0], steps=5)
  own = first.model.trunk.variables[0].numpy()
  again = make_trainer(model_dir=tmp_path / "own", init_checkpoint=model_dir)
  again.build(tf.TensorSpec([None, 32], tf.float32))
  np.testing.assert_array_equal(again.model.trunk.variables[0].numpy(), own)
