"""SequenceSoftmaxHead against Keras on the valid tokens, and its masking."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import heads


def _data(seed=0, batch=6, time=7, classes=5):
  rng = np.random.default_rng(seed)
  logits = (3 * rng.normal(size=(batch, time, classes))).astype(np.float32)
  labels = rng.integers(0, classes, size=(batch, time))
  labels[0, 4:] = -1   # Padding at the end of row 0.
  labels[3, :] = -1    # Row 3 is all padding.
  return logits, labels


def test_loss_is_the_weighted_mean_over_valid_tokens_as_keras_computes_it():
  logits, labels = _data()
  weights = np.linspace(0.5, 2.0, 6).astype(np.float32)  # One weight per sequence.
  head = heads.SequenceSoftmaxHead("tags", num_classes=5)
  loss_sum, weight_sum, _ = head.loss_terms(labels, logits, weights)
  valid = labels != -1
  token_weights = np.broadcast_to(weights[:, None], labels.shape)[valid]
  reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(
      labels[valid], logits[valid], sample_weight=token_weights)
  np.testing.assert_allclose(loss_sum, reference, rtol=1e-6)
  np.testing.assert_allclose(weight_sum, token_weights.sum(), rtol=1e-6)


def test_smoothing_and_class_weights_with_per_token_weights_match_keras():
  logits, labels = _data(seed=1)
  rng = np.random.default_rng(1)
  token_weights = rng.uniform(0, 1, size=labels.shape).astype(np.float32)
  class_weights = np.array([1.0, 2.0, 0.5, 3.0, 1.0], np.float32)
  head = heads.SequenceSoftmaxHead("tags", num_classes=5, label_smoothing=0.1,
                                   class_weights=class_weights)
  loss_sum, weight_sum, _ = head.loss_terms(labels, logits, token_weights)
  valid = labels != -1
  w = token_weights[valid] * class_weights[labels[valid]]
  reference = keras.losses.CategoricalCrossentropy(
      from_logits=True, label_smoothing=0.1, reduction="sum")(
          np.eye(5)[labels[valid]], logits[valid], sample_weight=w)
  np.testing.assert_allclose(loss_sum, reference, rtol=1e-6)
  np.testing.assert_allclose(weight_sum, w.sum(), rtol=1e-6)


def test_an_all_padding_batch_contributes_nothing_and_stays_finite():
  logits = tf.constant(np.random.default_rng(2).normal(size=(2, 3, 4)), tf.float32)
  labels = -np.ones((2, 3), np.int64)
  head = heads.SequenceSoftmaxHead("tags", num_classes=4, label_smoothing=0.2)
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss_sum, weight_sum, _ = head.loss_terms(labels, logits)
  assert float(loss_sum) == 0.0 and float(weight_sum) == 0.0
  np.testing.assert_array_equal(tape.gradient(loss_sum, logits), np.zeros((2, 3, 4)))


def test_token_accuracy_and_perplexity_match_numpy():
  logits, labels = _data(seed=3)
  head = heads.SequenceSoftmaxHead("tags", num_classes=5)
  head(tf.zeros([1, 1, 3]))
  head.update_metrics(labels[:3], logits[:3])
  head.update_metrics(labels[3:], logits[3:])
  valid = labels != -1
  z = logits[valid].astype(np.float64)
  log_probabilities = z - np.log(np.exp(z).sum(1, keepdims=True))
  nll = -log_probabilities[np.arange(len(z)), labels[valid]]
  np.testing.assert_allclose(head.perplexity.result(), np.exp(nll.mean()), rtol=1e-5)
  accuracy = np.mean(z.argmax(1) == labels[valid])
  np.testing.assert_allclose(head.accuracy.result(), accuracy, rtol=1e-6)


def test_predict_gives_a_distribution_per_timestep():
  logits, _ = _data()
  outputs = heads.SequenceSoftmaxHead("tags", num_classes=5).predict(logits)
  assert outputs["probabilities"].shape == (6, 7, 5) and outputs["classes"].shape == (6, 7)
  np.testing.assert_allclose(tf.reduce_sum(outputs["probabilities"], -1), 1.0, rtol=1e-6)


def test_ignore_label_must_lie_outside_the_classes():
  with pytest.raises(ValueError, match=r"'tags': ignore_label must be an integer outside \[0, 5\)"):
    heads.SequenceSoftmaxHead("tags", num_classes=5, ignore_label=3)
