"""Per-example losses from logits, in float32: pure tensor math, no state.

Each function returns one float32 loss per example (shape [batch]); heads
weight and sum them. Inputs may be float16 or bfloat16: they are cast to
float32 first, so the normaliser never runs in low precision.
"""

import tensorflow as tf


def sparse_softmax_cross_entropy(labels, logits):
  """Cross-entropy of integer class ids against logits [batch, classes].

  TensorFlow's fused op computes log-sum-exp(z) - z[y] stably; labels stay
  integers (never cast to a low-precision float).
  """
  return tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))


def mean_squared_error(targets, predictions):
  """Mean over the last axis of (y - y_hat)^2, as keras.losses.MeanSquaredError."""
  error = tf.cast(targets, tf.float32) - tf.cast(predictions, tf.float32)
  return tf.reduce_mean(tf.square(error), axis=-1)


def mean_absolute_error(targets, predictions):
  """Mean over the last axis of |y - y_hat|, as keras.losses.MeanAbsoluteError."""
  error = tf.cast(targets, tf.float32) - tf.cast(predictions, tf.float32)
  return tf.reduce_mean(tf.abs(error), axis=-1)


def huber(targets, predictions, delta):
  """Mean over the last axis of the Huber loss, as keras.losses.Huber(delta)."""
  error = tf.abs(tf.cast(targets, tf.float32) - tf.cast(predictions, tf.float32))
  quadratic = tf.minimum(error, delta)
  linear = error - quadratic
  return tf.reduce_mean(0.5 * tf.square(quadratic) + delta * linear, axis=-1)
