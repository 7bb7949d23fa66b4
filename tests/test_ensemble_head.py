"""EnsembleHead: what it computes, and how it differs from averaging probabilities."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import heads


def _ensemble(**kwargs):
  head = heads.EnsembleHead("digit", [heads.SoftmaxHead("a", 3), heads.SoftmaxHead("b", 3)],
                            **kwargs)
  head(tf.zeros([1, 4]))
  return head


def test_prediction_is_the_normalised_geometric_mean_not_the_mean_of_probabilities():
  head = _ensemble()
  # Member a: sure it is class 0 or 1; member b: sure it is not class 0.
  logits = tf.constant([[[5.0, 5.0, -5.0], [-5.0, 2.0, 2.0]]])  # (B=1, K=2, C=3)
  p = tf.nn.softmax(logits, -1).numpy()[0]
  geometric = np.sqrt(p[0] * p[1])
  geometric /= geometric.sum()
  arithmetic = p.mean(0)
  predicted = head.predict(logits)["probabilities"].numpy()[0]
  np.testing.assert_allclose(predicted, geometric, rtol=1e-5)
  assert predicted.argmax() == 1  # Both members allow class 1.
  assert arithmetic[0] > 0.25 and predicted[0] < 0.05  # Averaging keeps a vetoed class alive.


def test_loss_is_the_mean_of_the_members_losses_and_metrics_sit_side_by_side():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(16, 2, 3)).astype(np.float32) * 2
  labels = rng.integers(0, 3, size=16)
  head = _ensemble()
  loss_sum, weight_sum, _ = head.loss_terms(labels, logits)
  keras_sum = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
  expected = (keras_sum(labels, logits[:, 0]) + keras_sum(labels, logits[:, 1])) / 2
  np.testing.assert_allclose(loss_sum, expected, rtol=1e-6)
  assert float(weight_sum) == 16.0
  head.update_metrics(labels, logits)
  results = head.metric_results()
  assert {"accuracy", "nll", "ece", "a/accuracy", "b/accuracy", "a/nll"} <= set(results)
  combined = head.combined_logits(logits).numpy()
  np.testing.assert_allclose(results["accuracy"], np.mean(combined.argmax(1) == labels))
  np.testing.assert_allclose(results["a/accuracy"], np.mean(logits[:, 0].argmax(1) == labels))


def test_members_are_checkpointed_by_name(tmp_path):
  head = _ensemble()
  head.members[1].logits_layer.kernel.assign(tf.ones([4, 3]))
  path = tf.train.Checkpoint(head=head).save(str(tmp_path / "ckpt"))
  keys = [name for name, _ in tf.train.list_variables(path)]
  assert any("head/member_b/logits_layer/" in key for key in keys), keys
  restored = _ensemble()
  tf.train.Checkpoint(head=restored).restore(path).assert_existing_objects_matched()
  np.testing.assert_array_equal(restored.members[1].logits_layer.kernel, np.ones([4, 3]))


@pytest.mark.parametrize("members,message", [
    ([heads.SoftmaxHead("a", 3)], r"'digit': members must be two or more SoftmaxHeads"),
    ([heads.SoftmaxHead("a", 3), heads.SoftmaxHead("b", 4)], r"one num_classes"),
    ([heads.SoftmaxHead("a", 3), heads.SoftmaxHead("a", 3)], r"unique names"),
    ([heads.SoftmaxHead("a", 2, class_weights=[1, 2]), heads.SoftmaxHead("b", 2)],
     r"must share class_weights"),
])
def test_bad_members_are_refused(members, message):
  with pytest.raises(ValueError, match=message):
    heads.EnsembleHead("digit", members)
