"""Sums over a batch, written as dot products.

XLA's CPU backend rewrites every reduction over more than 32 values into a
tree (a reduce-window, then a reduce): two kernels, and the elementwise work
that produces the values stays a kernel of its own. A dot product of the
same values compiles to one kernel with that work fused in, and `tf.einsum`
adds one op to the traced graph (`tf.tensordot` adds eight). Both the first
call's compile time and its tracing grow with these counts (BENCHMARKS.md);
on GPUs and TPUs XLA turns such dots back into plain reductions.
"""

import tensorflow as tf

_AXES = "abcdefghij"


def dot(a, b):
  """`sum(a * b)` over all axes; `a` and `b` have one shape (float)."""
  a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
  axes = _AXES[:a.shape.rank]
  return tf.einsum(f"{axes},{axes}->", a, b)


def total(values):
  """`sum(values)`."""
  values = tf.convert_to_tensor(values)
  return dot(values, tf.ones_like(values))


def weighted_sum(values, weights):
  """`sum(values * weights)` over the entries whose weight is > 0.

  A select, not only the product: a value that is NaN where its weight is 0
  (an absent label) must not reach the sum (0 * NaN is NaN).
  """
  values, weights = tf.convert_to_tensor(values), tf.convert_to_tensor(weights)
  kept = tf.where(weights > 0, values, tf.zeros_like(values))
  if not (kept.shape.is_fully_defined() and kept.shape == weights.shape):
    weights = tf.broadcast_to(weights, tf.shape(kept))  # e.g. [batch, 1] over tokens.
  return dot(kept, tf.cast(weights, kept.dtype))
