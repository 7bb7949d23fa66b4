"""Large vocabularies: the output projection fused with the cross-entropy, in chunks.

A language-model head over V = 65,536 classes on 2,048 tokens has logits of
512 MB in float32, and the plain softmax cross-entropy keeps several tensors
of that size alive (logits, probabilities, their gradient). Here the tokens
are processed `chunk_size` at a time inside one loop: each chunk's logits
exist only while that chunk is processed, so the step's memory grows with
`chunk_size * V`, not `tokens * V`.

When the engine trains (`training=True`), each chunk's gradients for the
features, kernel and bias are computed in the same pass as its loss, while
its logits are at hand; the backward pass only scales them by the upstream
gradient. The projection is then computed three times per step, like the
plain head's forward and two backward matmuls. Anywhere else (evaluation,
or a caller's own `tf.GradientTape` around `loss_terms`) the forward pass
keeps nothing and the backward pass recomputes each chunk's logits.
"""

from typing import Optional

import keras
import tensorflow as tf

from heads import base
from heads import guard
from heads import metrics as metrics_lib
from heads import sequence
from heads import softmax

# The default chunk holds about this many logits (32 MB in float32). With
# 65,536 classes (128 tokens) that gave 0.23x the plain head's memory at
# 1.15x its step time; 256 tokens 0.27x at 1.13x (BENCHMARKS.md).
_LOGITS_PER_CHUNK = 1 << 23


def fused_softmax_cross_entropy(features, kernel, bias, labels, weights, *, chunk_size,
                                label_smoothing=0.0, z_loss=0.0, training=True):
  """Weighted sums over tokens of the loss, the NLL and the top-1 hits.

  Args:
    features: `[tokens, width]`, any float dtype (the matmuls run in it).
    kernel, bias: `[width, V]` and `[V]`, the projection (float32 variables'
      values); cast to the features' dtype for the matmuls, as Keras's Dense.
    labels: `[tokens]` class ids in [0, V) (absent labels already replaced).
    weights: `[tokens]` float32 loss weights (0 for padding).
    chunk_size: tokens per chunk.
    label_smoothing: eps; the target is `(1 - eps) * one_hot + eps / V`.
    z_loss: coefficient of `logsumexp(logits)^2` added to each token's loss.
    training: compute the gradients in the forward pass (see the module
      docstring); False recomputes them in the backward pass instead.

  Returns:
    float32 `(loss_sum, nll_sum, hits_sum)`: `sum_i w_i * loss_i`, the
    same of the unsmoothed negative log-likelihood, and of 1 where the label's
    logit is the largest. Only `loss_sum` has a gradient.
  """
  labels = tf.cast(labels, tf.int32)
  weights = tf.cast(weights, tf.float32)
  options = dict(chunk_size=chunk_size, label_smoothing=float(label_smoothing),
                 z_loss=float(z_loss))

  @tf.custom_gradient
  def fused(features, kernel, bias):
    sums, gradients = _chunk_loop(features, kernel, bias, labels, weights,
                                  with_gradients=training, **options)

    def backward(d_loss_sum, *unused_upstream):
      del unused_upstream  # The NLL and the hits are metrics: no gradient.
      grads = gradients if gradients is not None else _chunk_loop(
          features, kernel, bias, labels, weights, with_gradients=True, **options)[1]
      return [tf.cast(d_loss_sum * grad, target.dtype)
              for grad, target in zip(grads, (features, kernel, bias))]

    return sums, backward

  return fused(features, kernel, bias)


def _chunk_loop(features, kernel, bias, labels, weights, *, chunk_size, label_smoothing,
                z_loss, with_gradients):
  """Runs `_chunk` over the tokens; returns (sums, (d_features, d_kernel, d_bias) or None)."""
  dtype = features.dtype
  kernel_c, bias_c = tf.cast(kernel, dtype), tf.cast(bias, dtype)
  tokens, width = tf.shape(features)[0], features.shape[-1]
  chunks = (tokens + chunk_size - 1) // chunk_size
  padding = chunks * chunk_size - tokens
  # Padded tokens: zero features, label 0, weight 0; they add nothing.
  features_by_chunk = tf.reshape(tf.pad(features, [[0, padding], [0, 0]]),
                                 [chunks, chunk_size, width])
  labels_by_chunk = tf.reshape(tf.pad(labels, [[0, padding]]), [chunks, chunk_size])
  weights_by_chunk = tf.reshape(tf.pad(weights, [[0, padding]]), [chunks, chunk_size])

  def body(index, sums, accumulated):
    chunk_sums, chunk_grads = _chunk(
        features_by_chunk[index], kernel_c, bias_c, labels_by_chunk[index],
        weights_by_chunk[index], label_smoothing, z_loss, with_gradients)
    sums = [total + value for total, value in zip(sums, chunk_sums)]
    if with_gradients:
      d_features, d_kernel, d_bias = accumulated
      accumulated = (d_features.write(index, chunk_grads[0]),
                     d_kernel + chunk_grads[1], d_bias + chunk_grads[2])
    return index + 1, sums, accumulated

  zero = tf.constant(0.0)
  accumulated = ()
  if with_gradients:
    accumulated = (tf.TensorArray(tf.float32, size=chunks, element_shape=[chunk_size, width]),
                   tf.zeros(kernel.shape, tf.float32), tf.zeros(bias.shape, tf.float32))
  # One chunk at a time: parallel iterations would hold several chunks' logits.
  _, sums, accumulated = tf.while_loop(
      lambda index, *_: index < chunks, body, (tf.constant(0), [zero, zero, zero], accumulated),
      parallel_iterations=1)
  if not with_gradients:
    return tuple(sums), None
  d_features, d_kernel, d_bias = accumulated
  d_features = tf.reshape(d_features.stack(), [-1, width])[:tokens]
  return tuple(sums), (d_features, d_kernel, d_bias)


def _chunk(features, kernel, bias, labels, weights, label_smoothing, z_loss, with_gradients):
  """One chunk's weighted sums and, optionally, its float32 gradients (see above).

  With `lse = logsumexp(z)`, the loss of a token is
  `lse - (1 - eps) z_y - eps mean(z) + z_loss lse^2`, and its gradient with
  respect to the logits `softmax(z) (1 + 2 z_loss lse) - (1 - eps) one_hot(y) - eps / V`.
  """
  logits = tf.cast(tf.matmul(features, kernel) + bias, tf.float32)  # (C, V)
  vocab = logits.shape[-1]
  largest = tf.reduce_max(logits, axis=-1)
  exponentials = tf.exp(logits - largest[:, tf.newaxis])  # Reused by the gradient.
  normaliser = tf.reduce_sum(exponentials, axis=-1)
  log_normaliser = largest + tf.math.log(normaliser)
  target = tf.gather(logits, labels, axis=1, batch_dims=1)
  nll = log_normaliser - target
  loss = nll
  if label_smoothing:
    loss = (log_normaliser - (1.0 - label_smoothing) * target
            - label_smoothing * tf.reduce_mean(logits, axis=-1))
  if z_loss:
    loss += z_loss * tf.square(log_normaliser)
  hits = tf.cast(target >= largest, tf.float32)
  sums = [tf.reduce_sum(weights * value) for value in (loss, nll, hits)]
  if not with_gradients:
    return sums, None
  scale = weights * (1.0 + 2.0 * z_loss * log_normaliser) / normaliser
  d_logits = (exponentials * scale[:, tf.newaxis]
              - ((1.0 - label_smoothing) * weights)[:, tf.newaxis] * tf.one_hot(labels, vocab)
              - (label_smoothing / vocab) * weights[:, tf.newaxis])
  d_logits_c = tf.cast(d_logits, features.dtype)
  d_features = tf.cast(tf.matmul(d_logits_c, kernel, transpose_b=True), tf.float32)
  d_kernel = tf.cast(tf.matmul(features, d_logits_c, transpose_a=True), tf.float32)
  return sums, (d_features, d_kernel, tf.reduce_sum(d_logits, axis=0))


def default_chunk_size(vocab_size: int) -> int:
  """Tokens per chunk so that a chunk holds about 8M logits (at least 8 tokens)."""
  return max(8, _LOGITS_PER_CHUNK // vocab_size)


class LargeVocabSoftmaxHead(base.Head):
  """Softmax over a large vocabulary, its projection fused with the loss.

  Same model and loss as `SequenceSoftmaxHead` (or `SoftmaxHead` for one
  token per example) on a `Dense(vocab_size)` projection, computed chunk by
  chunk so the `[tokens, vocab_size]` logits and their gradient never exist
  whole during training or evaluation (see the module docstring).

  Because the projection is part of the loss, the head's output in the
  model ("logits" to the engine) is its input features, `[batch, width]` or
  `[batch, time, width]`; `predict` projects them and returns
  `probabilities` and `classes` as the softmax heads do.

  Labels: class ids `[batch, time]` or `[batch]`, with `ignore_label` for
  padding; sample weights per sequence or per token. The loss is the
  weighted mean token cross-entropy with `label_smoothing`, plus
  `z_loss * logsumexp(logits)^2` per token (PaLM's auxiliary loss, which keeps
  the normaliser near 0).

  Metrics: token accuracy and perplexity (of the unsmoothed NLL), taken from
  the loss pass itself.

  Args:
    chunk_size: tokens per chunk; by default about 8M logits per chunk.
  """

  def __init__(self, name: str, vocab_size: int, chunk_size: Optional[int] = None,
               label_smoothing: float = 0.0, z_loss: float = 0.0, ignore_label: int = -1,
               **kwargs):
    super().__init__(name, **kwargs)
    guard.check_num_classes(name, vocab_size, "vocab_size")
    if chunk_size is None:
      chunk_size = default_chunk_size(vocab_size)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
      raise ValueError(
          f"Head '{name}': chunk_size must be an integer >= 1; received {chunk_size!r}.")
    if not isinstance(z_loss, (int, float)) or isinstance(z_loss, bool) or z_loss < 0:
      raise ValueError(f"Head '{name}': z_loss must be a number >= 0; received {z_loss!r}.")
    sequence.check_ignore_label(name, ignore_label, vocab_size)
    self.vocab_size = self.num_classes = vocab_size
    self.chunk_size = chunk_size
    self.label_smoothing = softmax.check_label_smoothing(name, label_smoothing)
    self.z_loss = float(z_loss)
    self.ignore_label = ignore_label
    # Same variables as the softmax heads' `logits` layer, so weights carry over.
    self.logits_layer = keras.layers.Dense(vocab_size, name="logits")
    self.accuracy = keras.metrics.Mean(name="accuracy")
    self.perplexity = metrics_lib.Perplexity(name="perplexity")

  def build(self, input_shape):
    self.logits_layer.build(input_shape)

  @property
  def label_specs(self) -> tuple:
    return tuple(base.LabelSpec(shape=shape, dtype=tf.int64, num_classes=self.vocab_size,
                                ignore_value=self.ignore_label) for shape in ((None,), ()))

  @property
  def per_token_weights(self) -> bool:
    return True

  def call(self, features, training=False):
    del training
    return features  # The projection runs in the loss and in `predict`.

  def example_weights(self, labels, sample_weight=None):
    return sequence.token_weights(labels, self.ignore_label, sample_weight)

  def loss_terms(self, labels, logits, sample_weight=None, training=False):
    """The base contract's sums; `extras` also holds "nll", for the perplexity."""
    labels, features = tf.convert_to_tensor(labels), tf.convert_to_tensor(logits)
    weights = self.example_weights(labels, sample_weight)
    labels = self._clean_labels(labels, weights)
    width = features.shape[-1]
    if width is None or features.shape.rank != labels.shape.rank + 1:
      raise ValueError(
          f"Head '{self.name}': features must be labels' shape plus a known width, "
          f"[batch(, time), width]; received features {features.shape} for labels "
          f"{labels.shape}.")
    loss_sum, nll_sum, hits_sum = fused_softmax_cross_entropy(
        tf.reshape(features, [-1, width]), self.logits_layer.kernel.value,
        self.logits_layer.bias.value, tf.reshape(labels, [-1]), tf.reshape(weights, [-1]),
        chunk_size=self.chunk_size, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
        training=training)
    weight_sum = tf.reduce_sum(weights)
    return loss_sum, weight_sum, {"accuracy": hits_sum, "nll": nll_sum,
                                  "metric_weight": weight_sum}

  def update_metrics(self, labels, logits, sample_weight=None, extras=None):
    """From `extras` of the same batch when given (no second projection)."""
    if not extras:
      extras = self.loss_terms(labels, logits, sample_weight)[2]
    weight_sum = extras["metric_weight"]
    # A Mean of s / w with weight w accumulates exactly s and w.
    self.accuracy.update_state(tf.math.divide_no_nan(extras["accuracy"], weight_sum),
                               sample_weight=weight_sum)
    self.perplexity.update_state(tf.math.divide_no_nan(extras["nll"], weight_sum),
                                 sample_weight=weight_sum)

  def predict(self, logits) -> dict:
    projected = tf.cast(self.logits_layer(logits), tf.float32)
    return {"probabilities": tf.nn.softmax(projected, axis=-1),
            "classes": tf.argmax(projected, axis=-1)}
