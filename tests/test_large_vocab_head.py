"""LargeVocabSoftmaxHead: the fused chunked projection + cross-entropy.

References: the plain SoftmaxHead / SequenceSoftmaxHead on the same weights
(their losses are checked against Keras elsewhere), autodiff of the closed
form for the z-loss, and the one-device engine run.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
import heads

_WIDTH, _VOCAB = 12, 40


def _pair(label_smoothing=0.0, z_loss=0.0, chunk_size=8, seed=0):
  """A fused head and a plain SoftmaxHead sharing random weights."""
  rng = np.random.default_rng(seed)
  fused = heads.LargeVocabSoftmaxHead("lm", _VOCAB, chunk_size=chunk_size,
                                      label_smoothing=label_smoothing, z_loss=z_loss)
  plain = heads.SoftmaxHead("plain", _VOCAB, label_smoothing=label_smoothing)
  fused.build((None, _WIDTH))
  plain(tf.zeros([1, _WIDTH]))
  plain.logits_layer.kernel.assign(rng.normal(size=(_WIDTH, _VOCAB)) * 0.5)
  plain.logits_layer.bias.assign(rng.normal(size=_VOCAB))
  for mine, theirs in zip(fused.logits_layer.weights, plain.logits_layer.weights):
    mine.assign(theirs)
  return fused, plain


def _tokens(n=37, seed=1):
  rng = np.random.default_rng(seed)
  return (tf.constant(rng.normal(size=(n, _WIDTH)), tf.float32),
          tf.constant(rng.integers(0, _VOCAB, n)),
          tf.constant(rng.uniform(0.0, 2.0, n) * (rng.uniform(size=n) > 0.2), tf.float32))


def _loss_and_gradients(loss_fn, layer, features):
  with tf.GradientTape() as tape:
    tape.watch(features)
    loss = loss_fn(features)
  return loss, tape.gradient(loss, [features, layer.kernel, layer.bias])


def _assert_relative(actual, expected, tolerance=1e-5):
  actual, expected = np.asarray(actual), np.asarray(expected)
  error = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30)
  assert error <= tolerance, f"relative error {error:.2e}"


@pytest.mark.parametrize("label_smoothing,z_loss,training,jit_compile", [
    (0.0, 0.0, True, True),     # The engine's training pass, under XLA.
    (0.1, 1e-3, True, False),   # Smoothing and z-loss, without XLA (several replicas).
    (0.1, 1e-2, False, True),   # A caller's own tape: the backward pass recomputes.
])
def test_loss_and_gradients_equal_the_plain_head_within_1e_5(label_smoothing, z_loss,
                                                             training, jit_compile):
  fused, plain = _pair(label_smoothing, z_loss)
  features, labels, weights = _tokens()  # 37 tokens: the last chunk of 8 is padded.

  def fused_loss(x):
    return fused.loss_terms(labels, x, weights, training=training)[0]

  def plain_loss(x):
    logits = plain(x)
    loss_sum, _, _ = plain.loss_terms(labels, logits, weights)
    # PaLM's z-loss, by autodiff of its closed form.
    return loss_sum + z_loss * tf.reduce_sum(weights * tf.reduce_logsumexp(logits, -1) ** 2)

  compiled = tf.function(lambda x: _loss_and_gradients(fused_loss, fused.logits_layer, x),
                         jit_compile=jit_compile)
  loss, gradients = compiled(features)
  expected_loss, expected_gradients = _loss_and_gradients(plain_loss, plain.logits_layer,
                                                          features)
  _assert_relative(loss, expected_loss)
  for name, actual, expected in zip(("features", "kernel", "bias"), gradients,
                                    expected_gradients):
    assert actual.dtype == expected.dtype, name
    _assert_relative(actual, expected)


def test_metrics_from_the_loss_pass_equal_the_sequence_head_metrics():
  rng = np.random.default_rng(2)
  fused, _ = _pair()
  sequence = heads.SequenceSoftmaxHead("seq", _VOCAB)
  sequence(tf.zeros([1, 1, _WIDTH]))
  for mine, theirs in zip(sequence.logits_layer.weights, fused.logits_layer.weights):
    mine.assign(theirs)
  features = tf.constant(rng.normal(size=(4, 6, _WIDTH)), tf.float32)
  labels = rng.integers(0, _VOCAB, (4, 6))
  labels[:, 4:] = -1  # Padding.
  # Make a third of the tokens right, so accuracy is not trivially 0.
  logits = sequence(features).numpy()
  labels[:, :2] = logits.argmax(-1)[:, :2]
  labels = tf.constant(labels)
  weights = tf.constant([1.0, 2.0, 0.0, 0.5])
  _, weight_sum, terms = fused.loss_terms(labels, features, weights, training=True)
  fused.update_metrics(labels, features, weights, terms)
  fused.update_metrics(labels, features, weights)  # Without the terms: computed again.
  for _ in range(2):
    sequence.update_metrics(labels, sequence(features), weights)
  assert float(weight_sum) == pytest.approx(3.5 * 4)
  ours, theirs = fused.metric_results(), sequence.metric_results()
  # The sequence head also has calibration metrics; the fused head never forms the
  # probabilities they need.
  assert set(ours) == {"accuracy", "perplexity"} < set(theirs)
  assert 0.3 < float(theirs["accuracy"]) < 1.0
  for name in ours:
    assert float(ours[name]) == pytest.approx(float(theirs[name]), rel=1e-5), name


def _compiled_training_hlo(head, tokens, features_are_logits):
  features = tf.zeros([tokens, _WIDTH])
  labels = tf.zeros([tokens], tf.int64)

  @tf.function(jit_compile=True)
  def step(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      logits = x if features_are_logits else head(x)
      loss = head.loss_terms(labels, logits, None, training=True)[0]
    return tape.gradient(loss, [x, *head.trainable_weights])

  return step.experimental_get_compiler_ir(features)(stage="optimized_hlo")


def test_no_tokens_by_vocab_tensor_exists_in_the_compiled_training_step():
  tokens = 256
  fused = heads.LargeVocabSoftmaxHead("lm", 1000, chunk_size=32)
  plain = heads.SoftmaxHead("plain", 1000)
  fused.build((None, _WIDTH))
  plain(tf.zeros([1, _WIDTH]))
  whole = f"f32[{tokens},1000]"
  assert whole in _compiled_training_hlo(plain, tokens, False)  # The check can fail.
  hlo = _compiled_training_hlo(fused, tokens, True)
  assert whole not in hlo
  assert "f32[32,1000]" in hlo  # One chunk's logits.


def test_predict_is_the_softmax_of_the_projection():
  fused, plain = _pair()
  features = _tokens(5)[0]
  ours, theirs = fused.predict(fused(features)), plain.predict(plain(features))
  np.testing.assert_allclose(ours["probabilities"], theirs["probabilities"], rtol=1e-6)
  np.testing.assert_array_equal(ours["classes"], theirs["classes"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(vocab_size=1), "vocab_size must be an integer >= 2"),
    (dict(vocab_size=10, chunk_size=0), "chunk_size must be an integer >= 1"),
    (dict(vocab_size=10, z_loss=-1.0), "z_loss must be a number >= 0"),
    (dict(vocab_size=10, label_smoothing=1.0), "label_smoothing"),
    (dict(vocab_size=10, ignore_label=3), "ignore_label must be an integer outside"),
])
def test_bad_arguments_name_the_head(kwargs, message):
  with pytest.raises(ValueError, match=f"Head 'lm'.*{message}"):
    heads.LargeVocabSoftmaxHead("lm", **kwargs)


def test_features_that_do_not_fit_the_labels_name_the_head():
  fused, _ = _pair()
  with pytest.raises(ValueError, match=r"Head 'lm': features must be labels' shape"):
    fused.loss_terms(tf.zeros([2, 3], tf.int64), tf.zeros([2, _WIDTH]))


def test_the_heads_flag_builds_a_large_vocabulary_head():
  head, = heads.parse_heads("lm:large_vocab:32000")
  assert isinstance(head, heads.LargeVocabSoftmaxHead)
  assert head.vocab_size == 32000 and head.chunk_size == (1 << 23) // 32000


# --- In the engine ---------------------------------------------------------

_TIME = 5


def _sequence_data(n=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, _TIME, 6)).astype(np.float32)
  tokens = rng.integers(0, 9, size=(n, _TIME))
  tokens[np.arange(_TIME)[None, :] >= rng.integers(1, _TIME + 1, n)[:, None]] = -1
  return tf.data.Dataset.from_tensor_slices((x, {"tags": tokens}))


def _engine_trainer(tmp_path, name, head, scope=None, **config):
  config = engine.Config(model_dir=str(tmp_path / name), steps_per_loop=4, seed=0,
                         head_diagnostics=False, **config)
  def make():
    trunk = keras.Sequential([keras.layers.Dense(_WIDTH, activation="tanh")])
    return engine.Trainer(trunk=trunk, heads=[head()], optimizer=keras.optimizers.Adam(0.05),
                          config=config)
  if scope is None:
    return make()
  with scope.scope():
    return make()


def _same_start(reference, other):
  spec = tf.TensorSpec([None, _TIME, 6], tf.float32)
  reference.build(spec)
  other.build(spec)
  for a, b in zip(reference.model.variables, other.model.variables):
    b.assign(a.numpy())


def test_two_replicas_of_micro_batches_train_like_the_sequence_head_on_one_device(tmp_path):
  """The whole engine path: loss, gradients, metrics and evaluation, exactly."""
  mirrored = engine.create_strategy(engine.Config(model_dir="unused", strategy="mirrored",
                                                  num_cpu_devices=2))
  plain = _engine_trainer(tmp_path, "plain", lambda: heads.SequenceSoftmaxHead(
      "tags", 9, label_smoothing=0.1), train_metrics="full")
  fused = _engine_trainer(tmp_path, "fused", lambda: heads.LargeVocabSoftmaxHead(
      "tags", 9, chunk_size=7, label_smoothing=0.1), mirrored, strategy="mirrored",
                          num_cpu_devices=2, accumulation_steps=2, train_metrics="full")
  _same_start(plain, fused)
  train = _sequence_data().batch(16, drop_remainder=True).repeat()
  evaluation = _sequence_data().batch(16)  # The training examples: random labels.
  untrained = plain.evaluate(evaluation)
  plain_results = plain.train(train, steps=8)
  fused_results = fused.train(train, steps=8)
  for key in ("loss", "tags/loss", "tags/accuracy", "tags/perplexity"):
    np.testing.assert_allclose(fused_results[key], plain_results[key], rtol=1e-5, err_msg=key)
  for a, b in zip(plain.model.variables, fused.model.variables):
    # Two implementations (fused chunks vs one softmax) over 8 Adam steps, whose division
    # by sqrt(v) magnifies float32 rounding where a gradient is near 0: 1e-5 absolute.
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5, err_msg=a.path)
  plain_eval, fused_eval = plain.evaluate(evaluation), fused.evaluate(evaluation)
  assert plain_eval["loss"] < untrained["loss"] - 0.05  # It learned.
  for key in ("loss", "tags/accuracy", "tags/perplexity"):
    np.testing.assert_allclose(fused_eval[key], plain_eval[key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_close_to_float32(tmp_path, precision):
  def head():
    return heads.LargeVocabSoftmaxHead("tags", 9, chunk_size=16, z_loss=1e-3)
  reference = _engine_trainer(tmp_path, "float32", head)
  engine.set_precision(precision)
  try:
    mixed = _engine_trainer(tmp_path, precision, head, precision=precision)
  finally:
    engine.set_precision("float32")
  _same_start(reference, mixed)
  train = _sequence_data().batch(16, drop_remainder=True).repeat()
  expected, results = reference.train(train, steps=8), mixed.train(train, steps=8)
  assert np.isfinite(results["tags/loss"])
  np.testing.assert_allclose(results["tags/loss"], expected["tags/loss"], rtol=0.03)
  assert mixed.heads[0].logits_layer.kernel.dtype == "float32"
