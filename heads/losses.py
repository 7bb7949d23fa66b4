"""Per-example losses from logits, in float32: pure tensor math, no state.

Each function returns one float32 loss per example (shape [batch]); heads
weight and sum them. Inputs may be float16 or bfloat16: they are cast to
float32 first, so the normaliser never runs in low precision.
"""

import tensorflow as tf


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


def softmax_cross_entropy(labels, logits, label_smoothing=0.0, ignore_value=None):
  """Cross-entropy of class ids or of target distributions, with label smoothing.

  Integer `labels` [...] are class ids; float `labels` [..., C] are target
  distributions. The target is `(1 - eps) * target + eps / C`. For class ids
  no one-hot of the C classes is built:
  `loss = logsumexp(z) - (1 - eps) * z[y] - eps * mean(z)`.
  """
  logits = tf.cast(logits, tf.float32)
  if labels.dtype.is_floating:
    targets = tf.cast(labels, tf.float32)
    if label_smoothing:
      targets = (1.0 - label_smoothing) * targets + label_smoothing / logits.shape[-1]
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
  labels = tf.cast(labels, tf.int32)
  if ignore_value is not None:
    labels = tf.where(labels == ignore_value, tf.zeros_like(labels), labels)
  if not label_smoothing:
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  log_normaliser = tf.reduce_logsumexp(logits, axis=-1)
  target_logit = tf.gather(logits, labels, axis=-1, batch_dims=labels.shape.rank)
  return (log_normaliser - (1.0 - label_smoothing) * target_logit
          - label_smoothing * tf.reduce_mean(logits, axis=-1))


def sigmoid_cross_entropy(targets, logits, pos_weight=None):
  """Mean over classes of the binary cross-entropy from logits.

  TensorFlow's stable forms: `max(z, 0) - z y + log(1 + exp(-|z|))`, and with
  `pos_weight` the positive term scaled per class.
  """
  targets = tf.cast(targets, tf.float32)
  logits = tf.cast(logits, tf.float32)
  if pos_weight is None:
    per_class = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
  else:
    per_class = tf.nn.weighted_cross_entropy_with_logits(
        labels=targets, logits=logits, pos_weight=pos_weight)
  return tf.reduce_mean(per_class, axis=-1)
