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
