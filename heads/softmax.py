"""Single-label classification: one softmax over `num_classes` classes."""

import keras
import tensorflow as tf

from heads import base
from heads import losses


class SoftmaxHead(base.Head):
  """Integer class ids in [0, num_classes); cross-entropy from logits.

  Metrics: accuracy. The loss is reported by the engine as `<name>/loss`.
  """

  def __init__(self, name: str, num_classes: int, **kwargs):
    super().__init__(name, **kwargs)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
      raise ValueError(
          f"Head '{name}': num_classes must be an integer >= 1; received {num_classes!r}.")
    self.num_classes = num_classes
    self.logits_layer = keras.layers.Dense(num_classes, name="logits")
    self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

  @property
  def label_spec(self) -> base.LabelSpec:
    return base.LabelSpec(shape=(), dtype=tf.int64, num_classes=self.num_classes)

  def call(self, features, training=False):
    del training  # No dropout of its own.
    return self.logits_layer(features)  # (B, C)

  def per_example_loss(self, labels, logits):
    return losses.sparse_softmax_cross_entropy(labels, logits)  # (B,)

  def predict(self, logits) -> dict:
    logits = tf.cast(logits, tf.float32)
    return {"probabilities": tf.nn.softmax(logits, axis=-1),
            "classes": tf.argmax(logits, axis=-1)}

  def _update_metrics(self, labels, logits, sample_weight):
    self.accuracy.update_state(labels, tf.cast(logits, tf.float32), sample_weight)
