"""The double-softmax guard: heads fed probabilities warn once, or raise."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
import heads
from tests.conftest import dataset_of


def _probabilities(rows=8, classes=4):
  return tf.nn.softmax(tf.random.stateless_normal([rows, classes], seed=[1, 2]))


def test_eager_loss_on_probabilities_warns_once_with_the_head_name():
  head = heads.SoftmaxHead("digit", num_classes=4)
  labels = np.zeros(8, np.int64)
  with pytest.warns(UserWarning, match=r"Head 'digit': its logits look like probabilities"):
    head.loss_terms(labels, _probabilities())
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    head.loss_terms(labels, _probabilities())  # Once only.


def test_raise_policy_and_sequence_heads():
  head = heads.SequenceSoftmaxHead("tags", num_classes=4, double_softmax="raise")
  with pytest.raises(ValueError, match=r"Head 'tags': its logits look like probabilities"):
    head.loss_terms(np.zeros((2, 4), np.int64), tf.reshape(_probabilities(), [2, 4, 4]))


def test_logits_and_sigmoid_heads_do_not_trigger_it():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    heads.SoftmaxHead("digit", num_classes=4).loss_terms(
        np.zeros(8, np.int64), tf.random.stateless_normal([8, 4], seed=[3, 4]))
    heads.SigmoidHead("tags", num_classes=4).loss_terms(np.zeros((8, 4)), _probabilities())


@pytest.mark.parametrize("policy", ["warn", "raise"])
def test_a_trunk_ending_in_softmax_is_caught_before_the_first_step(make_trainer, policy):
  trunk = keras.Sequential([keras.layers.Dense(6, activation="softmax")])
  x, labels = engine.data.synthetic_arrays("train", 64)
  trainer = make_trainer(trunk=trunk, head_list=[
      heads.SoftmaxHead("digit", 10, double_softmax=policy), heads.RegressionHead("box", 4)])
  dataset = dataset_of(x, {"digit": labels["digit"], "box": labels["box"]})
  pattern = r"Head 'digit': its input features look like probabilities"
  if policy == "raise":
    with pytest.raises(ValueError, match=pattern):
      trainer.train(dataset, steps=2)
    assert trainer.step == 0
  else:
    with pytest.warns(UserWarning, match=pattern):
      trainer.train(dataset, steps=2)
    assert trainer.step == 2


def _looks_like_probabilities_reference(array):
  rows = np.reshape(array, [-1, array.shape[-1]])
  return bool(np.all((rows >= 0) & (rows <= 1)) and np.all(np.abs(rows.sum(-1) - 1) < 1e-3))


def test_probability_checks_match_a_numpy_reference_in_one_call():
  cases = [_probabilities(8, 4).numpy(),                          # probabilities
           np.array([[1.5, -0.5], [0.5, 0.5]], np.float32),       # sums to 1, not in [0, 1]
           np.array([[0.2, 0.2, 0.2]], np.float32),               # in [0, 1], sums to 0.6
           tf.reshape(_probabilities(8, 3), [2, 4, 3]).numpy(),   # rank 3, other width
           np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)]
  got = heads.guard.probability_checks([tf.constant(c) for c in cases]
                                       + [tf.zeros([4], tf.float32), tf.zeros([3, 2], tf.int32)])
  expected = [_looks_like_probabilities_reference(c) for c in cases] + [False, False]
  assert expected[:3] == [True, False, False] and expected[3]
  assert got.numpy().tolist() == expected
