"""Each gradient aggregator against closed forms, brute force and its defining properties."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
from engine import aggregation
import heads

C = 0.4  # CAGrad's default c.
_G1, _G2 = np.array([3.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
_BIG, _SMALL = np.array([100.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
_G = np.array([1.0, 2.0, 3.0])


def _unit(v):
  return v / np.linalg.norm(v)


# {case: (matrix, {method: expected direction})}; where a method is absent, the case is
# checked by its properties below.
CASES = {
    "orthogonal": (np.stack([_G1, _G2]), {
        "mean": (_G1 + _G2) / 2, "pcgrad": (_G1 + _G2) / 2, "upgrad": (_G1 + _G2) / 2,
        "mgda": 0.1 * _G1 + 0.9 * _G2,  # Weights proportional to 1 / |g_i|^2.
        "nash_mtl": _unit(_G1) + _unit(_G2),  # a_i = 1 / |g_i|.
        "imtl_g": (_unit(_G1) + _unit(_G2)) / (1 / 3 + 1),  # a_i proportional to 1 / |g_i|.
        "aligned_mtl": 1.0 * (_unit(_G1) + _unit(_G2))}),  # sigma_min = |g_2| = 1.
    "opposed": (np.stack([_G, -_G]), {method: np.zeros(3) for method in aggregation.METHODS}),
    "identical": (np.stack([_G, _G]), {
        "mean": _G, "pcgrad": _G, "mgda": _G, "upgrad": _G, "imtl_g": _G,
        "cagrad": (1 + C) / (1 + C * C) * _G,  # g0 + c g0, rescaled by 1 / (1 + c^2).
        "nash_mtl": np.sqrt(2) * _unit(_G),  # a_i = 1 / (|g| sqrt(K)).
        "aligned_mtl": 2 * _G}),  # The aligned rows summed: K g.
    "one_zero": (np.stack([_G, np.zeros(3)]), {
        "mean": _G / 2, "pcgrad": _G / 2, "upgrad": _G / 2,
        "mgda": np.zeros(3),  # 0 is in the hull: the minimum norm is 0.
        "nash_mtl": _unit(_G), "imtl_g": _G, "aligned_mtl": _G}),  # The zero head left out.
    "different_norms": (np.stack([_BIG, _SMALL]), {
        "mean": (_BIG + _SMALL) / 2, "pcgrad": (_BIG + _SMALL) / 2, "upgrad": (_BIG + _SMALL) / 2,
        "mgda": (1e-4 * _BIG + _SMALL) / (1 + 1e-4),
        "nash_mtl": _unit(_BIG) + _unit(_SMALL),
        "imtl_g": (_unit(_BIG) + _unit(_SMALL)) / (1 / 100 + 1),
        "aligned_mtl": _unit(_BIG) + _unit(_SMALL)}),
}


_FUNCTIONS = {}


def _aggregate(method, matrix, jit=False):
  """In a tf.function, as the train step runs it (eager while-loops run in Python: slow);
  with `jit`, compiled by XLA."""
  if (method, jit) not in _FUNCTIONS:
    options = {"seed": tf.constant(3, tf.int64)} if method == "pcgrad" else {}
    _FUNCTIONS[method, jit] = tf.function(
        lambda m: aggregation.aggregate(method, m, **options), jit_compile=jit)
  return _FUNCTIONS[method, jit](tf.constant(matrix, tf.float32)).numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_closed_forms(case):
  matrix, expected = CASES[case]
  for method, direction in expected.items():
    np.testing.assert_allclose(_aggregate(method, matrix), direction, rtol=2e-3,
                               atol=1e-4 * np.abs(matrix).max(), err_msg=method)


def _cagrad_brute_force(g1, g2, c=C, points=200_001):
  """CAGrad's dual over w = (t, 1 - t) on a grid, then its update, for two heads."""
  g0 = (g1 + g2) / 2
  t = np.linspace(0.0, 1.0, points)[:, None]
  gw = t * g1 + (1 - t) * g2
  radius = c * np.linalg.norm(g0)
  objective = gw @ g0 + radius * np.linalg.norm(gw, axis=1)
  best = gw[np.argmin(objective)]
  return (g0 + radius / np.linalg.norm(best) * best) / (1 + c * c)


def test_mgda_is_the_minimum_norm_point_and_cagrad_its_dual_minimum_by_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(3):
    g1, g2 = rng.normal(size=5), rng.normal(size=5)
    t = np.linspace(0.0, 1.0, 200_001)[:, None]
    hull = t * g1 + (1 - t) * g2
    nearest = hull[np.argmin(np.linalg.norm(hull, axis=1))]
    mgda = _aggregate("mgda", np.stack([g1, g2]))
    np.testing.assert_allclose(np.linalg.norm(mgda), np.linalg.norm(nearest), rtol=1e-4)
    np.testing.assert_allclose(mgda, nearest, atol=1e-3)
    np.testing.assert_allclose(_aggregate("cagrad", np.stack([g1, g2])),
                               _cagrad_brute_force(g1, g2), rtol=1e-3, atol=1e-4)


def _conflicting(seed, heads, dims):
  rng = np.random.default_rng(seed)
  matrix = rng.normal(size=(heads, dims))
  matrix[1] = -0.8 * matrix[0] + 0.3 * rng.normal(size=dims)  # A conflict for sure.
  return matrix * rng.uniform(0.1, 10.0, size=(heads, 1))


@pytest.mark.parametrize("heads,dims", [(3, 6), (5, 6), (4, 2), (10, 12)])  # (4, 2): more than
# dims; (10, 12): beyond EXACT_HEADS, the iterative solvers.
def test_upgrad_and_mgda_never_oppose_a_head(heads, dims):
  for seed in range(3):
    matrix = _conflicting(seed, heads, dims)
    scale = np.max(np.sum(matrix ** 2, axis=1))
    for method in ("upgrad", "mgda"):
      inner = matrix @ _aggregate(method, matrix)
      assert inner.min() >= -1e-4 * scale, (method, seed, inner)  # float32: see the module.
    for method in aggregation.METHODS:
      assert np.all(np.isfinite(_aggregate(method, matrix))), method


def test_mean_and_pcgrad_equal_the_plain_mean_without_conflicts():
  rng = np.random.default_rng(1)
  matrix = np.abs(rng.normal(size=(4, 7)))  # Non-negative rows: every inner product >= 0.
  for method in ("mean", "pcgrad", "upgrad"):
    np.testing.assert_allclose(_aggregate(method, matrix), matrix.mean(axis=0), rtol=1e-5,
                               err_msg=method)


def test_upgrad_projects_each_gradient_onto_the_dual_cone():
  # g_1 and g_2 conflict: each projection satisfies G pi(g_i) >= 0 and is the nearest such.
  matrix = np.array([[1.0, 0.0], [-1.0, 1.0]])
  # The dual cone {x : x_1 >= 0, x_2 >= x_1}; g_1 projects to (0.5, 0.5), g_2 to (0, 1).
  np.testing.assert_allclose(_aggregate("upgrad", matrix), ((0.5, 0.5) + np.array([0, 1.0])) / 2,
                             atol=1e-5)


def test_every_method_compiles_under_xla_and_matches_eager():
  matrix = _conflicting(4, 3, 8)
  for method in aggregation.METHODS:
    np.testing.assert_allclose(_aggregate(method, matrix, jit=True), _aggregate(method, matrix),
                               rtol=1e-4, atol=1e-5, err_msg=method)


def test_weights_reproduce_the_direction_and_bad_names_are_refused():
  matrix = _conflicting(5, 3, 4)
  for method in set(aggregation.METHODS) - {"pcgrad"}:
    weights = tf.function(lambda m, method=method: aggregation.weights(method, m))(
        tf.constant(matrix, tf.float32)).numpy()
    np.testing.assert_allclose(weights @ matrix, _aggregate(method, matrix), rtol=1e-4,
                               atol=1e-5, err_msg=method)
  with pytest.raises(ValueError, match=r"aggregation must be one of \('mean', 'pcgrad'"):
    aggregation.aggregate("gradvac", matrix)
  with pytest.raises(ValueError, match=r"aggregation 'mgda' takes the options \[\]; "
                                       r"received \['c'\]"):
    aggregation.aggregate("mgda", matrix, c=0.5)
  with pytest.raises(ValueError, match=r"cagrad option c must be >= 0; received -1"):
    aggregation.aggregate("cagrad", matrix, c=-1)


def _conflicting_heads():
  """Two regression heads whose targets pull the trunk in opposite directions, one 100x
  the other's scale, and a classification head."""
  return [heads.RegressionHead("up", 1), heads.RegressionHead("down", 1, weight=100.0),
          heads.SoftmaxHead("kind", 3)]


def _conflicting_data(overflow=False, classes=True):
  x, labels = engine.data.synthetic_arrays("train", 64)
  target = x[:, :1] + 1.0
  if overflow:
    x[16:32] = 1e6  # Beyond float16 in the second batch of 16.
  labels = {"up": target, "down": -target, **({"kind": labels["digit"] % 3} if classes else {})}
  return tf.data.Dataset.from_tensor_slices((x, labels)).batch(16)


def test_every_method_trains_in_the_step_and_reports_its_coefficients(make_trainer, tmp_path):
  for method in aggregation.METHODS:
    # Every aggregator compiles under XLA on its own (the test above); in the XLA step
    # here the two with iterative solvers, the others in the plain step (an XLA
    # compilation of the whole step costs seconds).
    trainer = make_trainer(model_dir=tmp_path / method, head_list=_conflicting_heads()[:2],
                           trunk=keras.Sequential([keras.layers.Dense(8)]), aggregation=method,
                           jit_compile=method in ("upgrad", "nash_mtl"), steps_per_loop=2,
                           aggregation_options="c=0.5" if method == "cagrad" else "")
    trainer.train(_conflicting_data(classes=False).repeat(), steps=2)
    scalars = trainer.last_train_scalars
    assert np.isfinite(scalars["loss"]) and trainer.step == 2, method
    if method != "pcgrad":
      coefficients = [scalars[f"{name}/aggregation_weight"] for name in ("up", "down")]
      assert np.all(np.isfinite(coefficients)), method
    assert trainer.trace_counts["train_loop"] == 1


def test_under_mixed_float16_an_overflowing_step_is_still_skipped(make_trainer):
  engine.set_precision("mixed_float16")
  try:
    trainer = make_trainer(head_list=_conflicting_heads(), aggregation="upgrad",
                           precision="mixed_float16", nonfinite="skip", steps_per_loop=1,
                           jit_compile=True)
    data = _conflicting_data(overflow=True)
    trainer.train(data.take(1), steps=1)
    before = [v.numpy() for v in trainer.model.trainable_variables]
    scale, skipped = float(trainer.optimizer.dynamic_scale.numpy()), int(trainer.skipped_steps)
    trainer.train(data.skip(1).take(1), steps=2)
    assert int(trainer.skipped_steps.numpy()) == skipped + 1 and trainer.step == 2
    assert float(trainer.optimizer.dynamic_scale.numpy()) == scale / 2
    for a, b in zip(before, trainer.model.trainable_variables):
      np.testing.assert_array_equal(a, b.numpy())
  finally:
    engine.set_precision("float32")


def test_the_config_checks_the_aggregation_and_its_options():
  config = engine.Config(model_dir="x", aggregation="cagrad", aggregation_options="c=0.5")
  assert config.aggregation_option_values == {"c": 0.5}
  with pytest.raises(ValueError, match=r"aggregation must be one of \('sum', 'mean', 'pcgrad'"):
    engine.Config(model_dir="x", aggregation="famo")
  with pytest.raises(ValueError, match=r"aggregation_options: aggregation='mgda' takes no "
                                       r"options; received \['c'\]"):
    engine.Config(model_dir="x", aggregation="mgda", aggregation_options="c=0.5")


def test_accumulated_micro_batches_aggregate_like_the_whole_batch(make_trainer, tmp_path):
  # The per-head gradients are summed over micro-batches before the aggregation.
  trainers = [make_trainer(model_dir=tmp_path / f"accumulate{steps}",
                           head_list=_conflicting_heads()[:2], aggregation="mgda",
                           optimizer=keras.optimizers.SGD(0.01), accumulation_steps=steps,
                           steps_per_loop=2) for steps in (1, 2)]
  for trainer in trainers:
    trainer.build(tf.TensorSpec([16, engine.data.NUM_FEATURES], tf.float32))
  for a, b in zip(trainers[0].model.variables, trainers[1].model.variables):
    b.assign(a.numpy())
  data = _conflicting_data(classes=False).unbatch().batch(16, drop_remainder=True).repeat()
  for trainer in trainers:
    trainer.train(data, steps=2)
  for a, b in zip(trainers[0].model.variables, trainers[1].model.variables):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
