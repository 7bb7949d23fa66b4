"""Sparse normalisers and their Fenchel-Young loss: pure tensor math, float32.

Keras 3.15's `sparsemax` is wrong whenever more than one class is in the
support (keras-team/keras#23425), and TensorFlow Addons does not import on TF
2.21, so these are written here from the papers:
- sparsemax (Martins & Astudillo, 2016): the Euclidean projection onto the
  simplex, found by sorting;
- alpha-entmax (Peters, Niculae & Martins, 2019):
  `p = [(alpha - 1) z - tau]_+ ^ (1 / (alpha - 1))`, with tau in closed form
  per support size for alpha = 1.5 and by bisection otherwise.
Both give exact zeros, so `log p` can be infinite: their loss is the
Fenchel-Young loss, whose gradient is `p - onehot(y)`.
"""

import tensorflow as tf

_BISECTION_STEPS = 40  # Halves an interval of width <= 1 down to ~1e-12.


def sparsemax(logits):
  """Sparsemax over the last axis."""
  z = tf.cast(logits, tf.float32)
  z_sorted = tf.sort(z, axis=-1, direction="DESCENDING")
  cumulative = tf.cumsum(z_sorted, axis=-1)
  k = tf.range(1, tf.shape(z)[-1] + 1, dtype=tf.float32)
  in_support = 1.0 + k * z_sorted > cumulative  # A prefix of the sorted classes.
  support_size = tf.reduce_sum(tf.cast(in_support, tf.float32), axis=-1, keepdims=True)
  support_sum = tf.reduce_sum(tf.where(in_support, z_sorted, 0.0), axis=-1, keepdims=True)
  tau = (support_sum - 1.0) / support_size
  return tf.nn.relu(z - tau)


def entmax15(logits):
  """1.5-entmax over the last axis, exact: tau in closed form per support size."""
  x = tf.cast(logits, tf.float32) / 2.0
  x -= tf.reduce_max(x, axis=-1, keepdims=True)
  x_sorted = tf.sort(x, axis=-1, direction="DESCENDING")
  rho = tf.range(1, tf.shape(x)[-1] + 1, dtype=tf.float32)
  mean = tf.cumsum(x_sorted, axis=-1) / rho
  mean_square = tf.cumsum(tf.square(x_sorted), axis=-1) / rho
  delta = (1.0 - rho * (mean_square - tf.square(mean))) / rho
  tau = mean - tf.sqrt(tf.nn.relu(delta))
  support_size = tf.reduce_sum(tf.cast(tau <= x_sorted, tf.int32), axis=-1, keepdims=True)
  tau_star = tf.gather(tau, support_size - 1, axis=-1, batch_dims=tau.shape.rank - 1)
  return tf.square(tf.nn.relu(x - tau_star))


def entmax_bisect(logits, alpha):
  """alpha-entmax over the last axis for 1 < alpha <= 2, by bisection on tau."""
  x = (alpha - 1.0) * tf.cast(logits, tf.float32)
  x -= tf.reduce_max(x, axis=-1, keepdims=True)
  num_classes = tf.cast(tf.shape(x)[-1], tf.float32)
  low = tf.fill(tf.shape(x[..., :1]), -1.0)  # sum p >= 1 at tau = max - 1.
  high = tf.fill(tf.shape(x[..., :1]), -tf.pow(1.0 / num_classes, alpha - 1.0))  # sum p <= 1.
  power = 1.0 / (alpha - 1.0)

  def halve(step, low, high):
    middle = (low + high) / 2.0
    total = tf.reduce_sum(tf.pow(tf.nn.relu(x - middle), power), axis=-1, keepdims=True)
    return step + 1, tf.where(total >= 1.0, middle, low), tf.where(total >= 1.0, high, middle)

  _, low, high = tf.while_loop(lambda step, low, high: step < _BISECTION_STEPS, halve,
                               (tf.constant(0), low, high))
  p = tf.pow(tf.nn.relu(x - (low + high) / 2.0), power)
  return p / tf.reduce_sum(p, axis=-1, keepdims=True)


def tsallis_regulariser(p, alpha):
  """Omega(p) = (sum_j p_j^alpha - 1) / (alpha (alpha - 1)); 0 at a one-hot p."""
  return (tf.reduce_sum(tf.pow(p, alpha), axis=-1) - 1.0) / (alpha * (alpha - 1.0))


def fenchel_young_loss(labels, logits, normaliser, alpha):
  """`<p - y, z> - Omega(p) + Omega(y)` for class ids y, with gradient `p - onehot(y)`.

  Non-negative, and zero exactly when the normaliser puts all mass on y. The
  gradient is given in closed form rather than differentiated through the
  sort.
  """
  logits = tf.cast(logits, tf.float32)
  targets = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1], dtype=tf.float32)

  @tf.custom_gradient
  def loss(z):
    p = normaliser(z)
    value = tf.reduce_sum((p - targets) * z, axis=-1) - tsallis_regulariser(p, alpha)
    def gradient(upstream):
      return upstream[..., tf.newaxis] * (p - targets)
    return value, gradient

  return loss(logits)
