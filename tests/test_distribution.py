"""Several replicas, micro-batches and clipping give the one-device update.

Runs on the two logical CPU devices conftest.py creates.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
import heads

_TIME, _WIDTH = 5, 6


def _data(n=64, seed=0):
  """Features [n, time, width]; the second half of every 16 has almost no valid tokens."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, _TIME, _WIDTH)).astype(np.float32)
  tokens = rng.integers(0, 4, size=(n, _TIME))
  lengths = np.where(np.arange(n) % 16 < 8, _TIME, 1)  # Replica 0 full, replica 1 padding.
  tokens[np.arange(_TIME)[None, :] >= lengths[:, None]] = -1
  labels = {"kind": rng.integers(0, 3, size=n), "size": rng.normal(size=(n, 2)).astype(np.float32),
            "tags": tokens}
  weights = {"kind": np.where(np.arange(n) % 5 == 0, 0.0, 1.0).astype(np.float32)}
  return tf.data.Dataset.from_tensor_slices((x, labels, weights))


def _trunk():
  inputs = keras.Input([_TIME, _WIDTH])
  tokens = keras.layers.Dense(8, activation="tanh")(inputs)
  return keras.Model(inputs, {"tokens": tokens, "pooled": keras.layers.GlobalAveragePooling1D()(tokens)})


def _heads():
  return [heads.SoftmaxHead("kind", 3, input="pooled", label_smoothing=0.1),
          heads.RegressionHead("size", 2, input="pooled", weight=0.5),
          heads.SequenceSoftmaxHead("tags", 4, input="tokens")]


def _balanced_heads():
  """GradNorm across two heads, learned uncertainty on the masked sequence head."""
  balancer = heads.weighting.GradNorm(alpha=1.0, learning_rate=0.1)
  return [heads.SoftmaxHead("kind", 3, input="pooled", weight=balancer),
          heads.RegressionHead("size", 2, input="pooled", weight=balancer),
          heads.SequenceSoftmaxHead("tags", 4, input="tokens",
                                    weight=heads.weighting.Uncertainty())]


def _trainer(tmp_path, name, scope=None, optimizer=lambda: keras.optimizers.Adam(0.01),
             head_list=_heads, **config):
  config.setdefault("head_diagnostics", False)  # A second XLA program; off unless tested.
  config = engine.Config(model_dir=str(tmp_path / name), steps_per_loop=5, seed=0, **config)
  if scope is None:
    return engine.Trainer(trunk=_trunk(), heads=head_list(), optimizer=optimizer(), config=config)
  with scope.scope():
    return engine.Trainer(trunk=_trunk(), heads=head_list(), optimizer=optimizer(), config=config)


def _same_start(reference, other):
  spec = tf.TensorSpec([None, _TIME, _WIDTH], tf.float32)
  reference.build(spec)
  other.build(spec)
  for a, b in zip(reference.model.variables, other.model.variables):
    b.assign(a.numpy())


def _assert_same_model(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(a.model.variables, b.model.variables):
    np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=rtol, atol=atol, err_msg=x.path)


@pytest.fixture(scope="module")
def mirrored():
  return engine.create_strategy(engine.Config(model_dir="unused", strategy="mirrored",
                                              num_cpu_devices=2))


def test_two_replicas_train_and_evaluate_like_one_device(tmp_path, mirrored):
  """Under XLA (on for the gradients under mirrored, which the loop's graph shows)."""
  one = _trainer(tmp_path, "one")
  two = _trainer(tmp_path, "two", mirrored, strategy="mirrored", num_cpu_devices=2)
  assert two.strategy.num_replicas_in_sync == 2
  _same_start(one, two)
  train = _data().batch(16, drop_remainder=True).repeat()
  one_results = one.train(train, steps=5)
  two_results = two.train(train, steps=5)
  assert one_results.keys() == two_results.keys()
  for key in one_results:
    np.testing.assert_allclose(two_results[key], one_results[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  # Within 1e-5 absolute: Adam moves a parameter whose gradient sums to about float32's
  # rounding of its per-example terms by ~lr * g / epsilon, so the two replicas' order of
  # summation shows there (seen once in a full suite run: a bias off by 2e-6, 0.25%).
  _assert_same_model(one, two, atol=1e-5)
  evaluation = _data(seed=1).batch(16, drop_remainder=True)
  one_eval, two_eval = one.evaluate(evaluation), two.evaluate(evaluation)
  for key in one_eval:
    np.testing.assert_allclose(two_eval[key], one_eval[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # The loop is traced once; MirroredStrategy traces the replica step once per device.
  x = np.random.default_rng(3).normal(size=(4, _TIME, _WIDTH)).astype(np.float32)
  for head, outputs in one.predict(x).items():
    for key, value in outputs.items():
      np.testing.assert_allclose(two.predict(x)[head][key], value, rtol=1e-5, atol=1e-6)
  assert two.trace_counts["train_loop"] == 1 and two.trace_counts["gradients"] == 2
  # XLA stays on for the gradients under mirrored: the loop holds a must-compile function.
  iterator = iter(mirrored.experimental_distribute_dataset(train))
  graph = two.loops.train_function.get_concrete_function(iterator, tf.constant(1)).graph
  compiled = [function.signature.name for function in graph.as_graph_def().library.function
              if function.attr["_XlaMustCompile"].b]
  assert any("gradients" in name for name in compiled), compiled
  two.train(train, steps=10)
  assert two.trace_counts["train_loop"] == 1 and two.trace_counts["gradients"] == 2


def test_gradnorm_uncertainty_pcgrad_and_diagnostics_on_two_replicas_equal_one_device(
    tmp_path, mirrored):
  # Without XLA: per-head gradients make the largest programs of the suite, and the
  # equality does not depend on the compiler (test_two_replicas_... runs under XLA).
  one = _trainer(tmp_path, "one", head_list=_balanced_heads, aggregation="pcgrad",
                 head_diagnostics=True, diagnostics_every=5, jit_compile=False)
  two = _trainer(tmp_path, "two", mirrored, head_list=_balanced_heads, aggregation="pcgrad",
                 head_diagnostics=True, diagnostics_every=5, strategy="mirrored", num_cpu_devices=2,
                 jit_compile=False)
  _same_start(one, two)
  train = _data().batch(16, drop_remainder=True).repeat()
  one.train(train, steps=10)  # Two loops: the second one's last step has diagnostics.
  two.train(train, steps=10)
  _assert_same_model(one, two)  # Trunk, heads, GradNorm's weights, the log-variance.
  gradnorm = one.heads[0].weighting
  assert gradnorm.weight_variable("kind").numpy() != 1.0  # It did move.
  one_scalars, two_scalars = one.last_train_scalars, two.last_train_scalars
  assert any(key.endswith("trunk_gradient_norm") for key in one_scalars)
  for key, value in one_scalars.items():
    if key.endswith("_per_second"):
      continue
    np.testing.assert_allclose(two_scalars[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("method", ["upgrad", "mgda"])
def test_upgrad_and_mgda_on_two_replicas_equal_one_device_with_sgd(tmp_path, mirrored, method):
  # The per-head gradients are all-reduced before the aggregation: both decide on the
  # global batch's gradients. (Every method compiles under XLA: test_aggregation.)
  sgd = lambda: keras.optimizers.SGD(0.05)  # pylint: disable=unnecessary-lambda-assignment
  one = _trainer(tmp_path, "one", optimizer=sgd, aggregation=method, jit_compile=False)
  two = _trainer(tmp_path, "two", mirrored, optimizer=sgd, aggregation=method,
                 strategy="mirrored", num_cpu_devices=2, jit_compile=False)
  _same_start(one, two)
  train = _data().batch(16, drop_remainder=True).repeat()
  one.train(train, steps=5)
  two.train(train, steps=5)
  _assert_same_model(one, two, rtol=1e-5, atol=1e-5)
  for name in ("kind", "size", "tags"):
    key = f"{name}/aggregation_weight"
    np.testing.assert_allclose(two.last_train_scalars[key], one.last_train_scalars[key],
                               rtol=1e-5, atol=1e-6, err_msg=key)


def test_accumulating_four_micro_batches_equals_one_batch_four_times_larger(tmp_path, mirrored):
  whole = _trainer(tmp_path, "whole", jit_compile=False)  # XLA: not what is tested here.
  micro = _trainer(tmp_path, "micro", accumulation_steps=4, jit_compile=False)
  _same_start(whole, micro)
  train = _data().batch(32, drop_remainder=True).repeat()
  whole.train(train, steps=3)
  micro.train(train, steps=3)
  _assert_same_model(whole, micro)
  one = _trainer(tmp_path, "one", jit_compile=False)  # And 2 replicas x 2 micro-batches.
  both = _trainer(tmp_path, "both", mirrored, strategy="mirrored", num_cpu_devices=2,
                  accumulation_steps=2, jit_compile=False)
  _same_start(one, both)
  one.train(train, steps=3)
  both.train(train, steps=3)
  _assert_same_model(one, both)


def test_clipping_scales_the_update_by_clip_norm_over_the_global_norm(tmp_path, mirrored):
  sgd = lambda: keras.optimizers.SGD(0.1)
  # XLA: not what is tested here (test_two_replicas_... runs under it).
  # train_metrics="full": the norm of every step is measured (by default only a loop's last).
  free = _trainer(tmp_path, "free", optimizer=sgd, jit_compile=False, train_metrics="full")
  clipped = _trainer(tmp_path, "clipped", optimizer=sgd, clip_norm=0.05, jit_compile=False)
  clipped2 = _trainer(tmp_path, "clipped2", mirrored, optimizer=sgd, strategy="mirrored",
                      num_cpu_devices=2, clip_norm=0.05, jit_compile=False)
  _same_start(free, clipped)
  _same_start(free, clipped2)
  start = [v.numpy() for v in free.model.trainable_variables]
  train = _data().batch(16, drop_remainder=True).repeat()
  free.train(train, steps=1)
  norm = free.last_train_scalars["gradient_norm"]
  clipped.train(train, steps=1)
  clipped2.train(train, steps=1)
  assert norm > 0.05
  for s, f, c, c2 in zip(start, free.model.trainable_variables, clipped.model.trainable_variables,
                         clipped2.model.trainable_variables):
    expected = s + (f.numpy() - s) * 0.05 / norm
    np.testing.assert_allclose(c.numpy(), expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(c2.numpy(), expected, rtol=1e-4, atol=1e-7)


def test_a_model_made_outside_the_scope_of_a_multi_replica_strategy_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"runs 2 replicas: create the trunk, heads, optimizer "
                                       r"and Trainer inside its scope"):
    _trainer(tmp_path, "outside", strategy="mirrored", num_cpu_devices=2)


def test_an_optimizer_made_outside_the_scope_is_refused(tmp_path, mirrored):
  optimizer = keras.optimizers.Adam()
  with pytest.raises(ValueError, match=r"optimizer was created outside the strategy's scope"):
    _trainer(tmp_path, "opt", mirrored, optimizer=lambda: optimizer)


def test_a_global_batch_that_does_not_split_evenly_names_the_sizes(tmp_path, mirrored):
  two = _trainer(tmp_path, "odd", mirrored, accumulation_steps=2)
  with pytest.raises(ValueError, match=r"global batch size \(18\) must divide into 2 replica\(s\) "
                                       r"x accumulation_steps=2 .* multiple of 4"):
    two.train(_data().batch(18, drop_remainder=True).repeat(), steps=1)
  with pytest.raises(ValueError, match=r"need a static size: batch the dataset with drop_remainder"):
    two.train(_data().batch(16).repeat(), steps=1)


@pytest.mark.parametrize("name,kwargs,message", [
    ("mirrored", {}, r"--strategy=mirrored needs GPUs, or --num_cpu_devices=N"),
    ("tpu", {}, r"--strategy=tpu: this machine has no TPU attached"),
    ("multi_worker", {}, r"--strategy=multi_worker needs TF_CONFIG"),
    ("gpu", {}, r"--strategy must be one of"),
    ("mirrored", {"num_cpu_devices": 3}, r"--num_cpu_devices=3: TensorFlow has already "
                                         r"initialised 2 logical CPU"),
])
def test_missing_hardware_gives_a_clear_error(name, kwargs, message, monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ValueError, match=message):
    engine.distribution.create_strategy(name, **kwargs)


def test_the_same_devices_give_the_same_strategy(mirrored):
  again = engine.create_strategy(engine.Config(model_dir="unused", strategy="mirrored",
                                               num_cpu_devices=2))
  assert again is mirrored  # Two would collide on collective-op instance keys.


def test_auto_picks_what_the_machine_and_cluster_have(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  assert engine.distribution._resolve_auto(0) == "one_device"  # pylint: disable=protected-access
  assert engine.distribution._resolve_auto(2) == "mirrored"  # pylint: disable=protected-access
  monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, '
                     '"task": {"type": "worker", "index": 0}}')
  assert engine.distribution._resolve_auto(0) == "multi_worker"  # pylint: disable=protected-access
