"""Every head, one shared battery: eager, tf.function, XLA, two replicas,
checkpoint round trip, and a few steps in the engine.

A new head gets all of it by adding one entry to CASES.
"""

import dataclasses
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

import heads
from tests.conftest import dataset_of


def _class_ids(classes):
  return lambda rng, n: rng.integers(0, classes, size=n)


def _padded_tokens(classes, time):
  def make(rng, n):
    labels = rng.integers(0, classes, size=(n, time))
    lengths = np.where(np.arange(n) < n // 2, time, 1)  # The second half is mostly padding.
    labels[np.arange(time)[None, :] >= lengths[:, None]] = -1
    return labels
  return make


@dataclasses.dataclass(frozen=True)
class HeadCase:
  make: Callable[[], heads.Head]  # Named "h".
  features: tuple  # One example's input shape.
  labels: Callable[[np.random.Generator, int], np.ndarray]
  # False where d loss / d logits grows with the logits (MSE): at float16's
  # extremes the true gradient itself exceeds float16's range.
  bounded_gradient: bool = True
  # False for a head whose output is its features (the fused large-vocabulary
  # head): its projection runs in their dtype, as a Dense layer's would, so
  # low precision is only close to float32, and huge features overflow it.
  outputs_logits: bool = True


CASES = {
    "softmax": HeadCase(
        lambda: heads.SoftmaxHead("h", 5, label_smoothing=0.1, class_weights=[1, 2, 1, .5, 1],
                                  top_k=2, temperature=1.3),
        (6,), _class_ids(5)),
    "softmax_soft_targets": HeadCase(
        lambda: heads.SoftmaxHead("h", 5), (6,),
        lambda rng, n: rng.dirichlet(np.ones(5), size=n).astype(np.float32)),
    "sequence_softmax": HeadCase(
        lambda: heads.SequenceSoftmaxHead("h", 5, label_smoothing=0.1, class_weights=[1, 2, 1, 1, 3]),
        (4, 6), _padded_tokens(5, 4)),
    "sigmoid": HeadCase(
        lambda: heads.SigmoidHead("h", 4, pos_weight=[1, 2, 3, 0.5]), (6,),
        lambda rng, n: (rng.uniform(size=(n, 4)) < 0.4).astype(np.float32)),
    "regression_mse": HeadCase(
        lambda: heads.RegressionHead("h", 3), (6,),
        lambda rng, n: rng.normal(size=(n, 3)).astype(np.float32), bounded_gradient=False),
    "regression_huber": HeadCase(
        lambda: heads.RegressionHead("h", 3, loss="huber", delta=0.5), (6,),
        lambda rng, n: 3 * rng.normal(size=(n, 3)).astype(np.float32)),
    "sparsemax": HeadCase(lambda: heads.SparsemaxHead("h", 5), (6,), _class_ids(5)),
    "entmax15": HeadCase(lambda: heads.EntmaxHead("h", 5), (6,), _class_ids(5)),
    "entmax_alpha_1_3": HeadCase(lambda: heads.EntmaxHead("h", 5, alpha=1.3), (6,), _class_ids(5)),
    "large_vocab": HeadCase(
        lambda: heads.LargeVocabSoftmaxHead("h", 5, chunk_size=3, label_smoothing=0.1,
                                            z_loss=1e-3),
        (4, 6), _padded_tokens(5, 4), outputs_logits=False),
    "ensemble": HeadCase(
        lambda: heads.EnsembleHead("h", [heads.SoftmaxHead("a", 5),
                                         heads.SoftmaxHead("b", 5, label_smoothing=0.2)]),
        (6,), _class_ids(5)),
}


def _batch(case, n=8, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, *case.features)).astype(np.float32)
  weights = rng.uniform(0.5, 2.0, size=n).astype(np.float32)
  weights[[1, 6]] = 0.0  # Absent labels on both replicas' halves.
  return x, case.labels(rng, n), weights


def _built(case):
  head = case.make()
  head(tf.zeros([1, *case.features]))
  for variable in head.trainable_variables:  # Away from the initial zeros of biases.
    variable.assign(tf.random.stateless_normal(variable.shape, seed=[7, 7]) * 0.5)
  return head


def _compute(head):
  def compute(x, labels, weights):
    with tf.GradientTape() as tape:
      tape.watch(x)
      logits = head(x)
      loss_sum, weight_sum, _ = head.loss_terms(labels, logits, weights)
    gradients = tape.gradient(loss_sum, [x] + head.trainable_variables)
    return loss_sum, weight_sum, gradients, head.predict(logits)
  return compute


def _assert_close(actual, expected, rtol=1e-5, atol=1e-5):
  for a, e in zip(tf.nest.flatten(actual), tf.nest.flatten(expected)):
    a, e = np.asarray(a), np.asarray(e)
    assert np.all(np.isfinite(a.astype(np.float64)))
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_eager_tf_function_and_xla_agree(name):
  case = CASES[name]
  head = _built(case)
  x, labels, weights = _batch(case)
  args = (tf.constant(x), tf.constant(labels), tf.constant(weights))
  compute = _compute(head)
  eager = compute(*args)
  _assert_close(tf.function(compute)(*args), eager)
  _assert_close(tf.function(compute, jit_compile=True)(*args), eager)


@pytest.fixture(scope="module")
def two_replicas():
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_replicas_reduce_to_the_one_device_result(name, two_replicas):
  case = CASES[name]
  reference = _built(case)
  with two_replicas.scope():
    head = case.make()
    head(tf.zeros([1, *case.features]))
  head.set_weights(reference.get_weights())
  x, labels, weights = _batch(case)
  dataset = two_replicas.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices((x, labels, weights)).batch(8))

  @tf.function
  def distributed(batch):
    def replica_step(features, y, w):
      with tf.GradientTape() as tape:
        logits = head(features)
        loss_sum, weight_sum, _ = head.loss_terms(y, logits, w)
      head.update_metrics(y, logits, w)
      return loss_sum, weight_sum, tape.gradient(loss_sum, head.trainable_variables)
    per_replica = two_replicas.run(replica_step, args=batch)
    return tf.nest.map_structure(lambda t: two_replicas.reduce("SUM", t, axis=None), per_replica)

  for batch in dataset:
    loss_sum, weight_sum, gradients = distributed(batch)
  logits = reference(x)
  with tf.GradientTape() as tape:
    ref_sum, ref_weight, _ = reference.loss_terms(labels, reference(x), weights)
  ref_gradients = tape.gradient(ref_sum, reference.trainable_variables)
  reference.update_metrics(labels, logits, weights)
  _assert_close([loss_sum / weight_sum, weight_sum], [ref_sum / ref_weight, ref_weight])
  _assert_close([g / weight_sum for g in gradients], [g / ref_weight for g in ref_gradients])
  _assert_close(head.metric_results(), reference.metric_results(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_checkpoint_round_trip_then_predict(name, tmp_path):
  case = CASES[name]
  head = _built(case)
  path = tf.train.Checkpoint(head=head).save(str(tmp_path / "ckpt"))
  restored = case.make()
  restored(tf.zeros([1, *case.features]))
  tf.train.Checkpoint(head=restored).restore(path).assert_existing_objects_matched()
  x, _, _ = _batch(case)
  _assert_close(restored.predict(restored(x)), head.predict(head(x)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trains_evaluates_and_predicts_in_the_engine(name, make_trainer):
  """One trainer, two phases. At a learning rate of 0 the weights stay put, so a loop's
  training metrics (the loss and the main metric, as sums inside the step) must equal
  an evaluation (Keras metrics) of the same four batches (`train_metrics="full"` is
  checked the same way in tests/test_trainer.py). Then, at 0.02, it learns its 32
  examples, and predicts."""
  case = CASES[name]
  x, labels, weights = _batch(case, n=32, seed=1)
  evaluation = dataset_of(x, {"h": labels}, {"h": weights}, batch_size=8, repeat=False)
  train = evaluation.repeat()
  trainer = make_trainer(trunk=keras.Sequential([keras.layers.Dense(8, activation="relu")]),
                         head_list=[case.make()], steps_per_loop=4,
                         optimizer=keras.optimizers.Adam(0.0))  # XLA: the test above.
  trained = trainer.train(train, steps=4)
  before = trainer.evaluate(evaluation)
  head = trainer.heads[0]
  assert set(trained) == {"loss", "h/loss", "h/weighted_loss", f"h/{head.main_metric}"}
  for key in trained:
    np.testing.assert_allclose(trained[key], before[key], rtol=2e-5, atol=1e-6, err_msg=key)
  trainer.optimizer.learning_rate = 0.02
  trainer.train(train, steps=24)
  results = trainer.evaluate(evaluation)
  assert {"loss", "h/loss"} | {f"h/{key}" for key in head.metric_results()} <= set(results)
  assert all(np.isfinite(value) for value in results.values())
  assert results["h/loss"] < 0.95 * before["h/loss"]  # It learns the 32 examples.
  outputs = trainer.predict(x[:3])["h"]
  assert all(np.all(np.isfinite(value)) for value in outputs.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_low_precision_and_extreme_logits_give_finite_float32_losses(name):
  case = CASES[name]
  head = _built(case)
  x, labels, weights = _batch(case)
  shape = head(x).shape
  signs = np.sign(np.random.default_rng(5).normal(size=shape)).astype(np.float32)
  random_logits = np.random.default_rng(6).normal(size=shape).astype(np.float32)
  cases = [(tf.float16, random_logits), (tf.bfloat16, random_logits)]
  if case.outputs_logits:
    cases += [(tf.float32, 1e4 * signs), (tf.float16, 65504.0 * signs)]
  for dtype, logits in cases:
    low = tf.cast(logits, dtype)
    as_float32 = tf.cast(low, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([low, as_float32])
      loss_sum, weight_sum, _ = head.loss_terms(labels, low, weights)
      reference, _, _ = head.loss_terms(labels, as_float32, weights)
    assert loss_sum.dtype == tf.float32 and weight_sum.dtype == tf.float32
    # Same math, in float32 (a projection in low precision: close to it).
    np.testing.assert_allclose(loss_sum, reference, rtol=1e-6 if case.outputs_logits else 1e-2)
    assert np.isfinite(loss_sum.numpy())
    assert np.all(np.isfinite(tape.gradient(reference, as_float32).numpy()))
    if case.bounded_gradient:
      gradient = tape.gradient(loss_sum, low)  # In the logits' own dtype.
      assert np.all(np.isfinite(tf.cast(gradient, tf.float32).numpy()))
