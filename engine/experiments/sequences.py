"""Sequences: variable-length token ids, a small Transformer or GRU, per-token and pooled heads.

The data are generated (offline, deterministic): sequences of 4 to
`max_length` token ids in [1, vocab_size) (0 pads), each token following the
previous one by `next = (5 * token + c) mod (vocab_size - 1) + 1` with a
random `c` in {0, 1}. Heads:
- `tags` (per token, softmax over 3): the token id mod 3;
- `majority` (pooled, softmax over 3): the most frequent tag of the sequence;
- `next` (per token, the large-vocabulary head, with `large_vocab=True`): the
  next token id (the last position has none).
The pipeline pads each batch to a bucket boundary (`bucket_boundaries`), so
the compiled step sees a few shapes, not one per batch.
"""

import keras
import numpy as np
import tensorflow as tf

from engine import data
from engine.experiment import Experiment
import heads as heads_lib

_SPLIT_SEEDS = {"train": 21, "eval": 22, "calibration": 23}
IGNORE = -1


def sequence_lists(split: str, num_examples: int, vocab_size: int, max_length: int):
  """Python lists per example: (tokens, tags, next tokens, majority tag)."""
  rng = np.random.RandomState(_SPLIT_SEEDS[split])
  examples = []
  for _ in range(num_examples):
    length = rng.randint(4, max_length + 1)
    tokens = [int(rng.randint(1, vocab_size))]
    for _ in range(length - 1):
      tokens.append((5 * tokens[-1] + int(rng.randint(2))) % (vocab_size - 1) + 1)
    tags = [token % 3 for token in tokens]
    examples.append((tokens, tags, tokens[1:] + [IGNORE], int(np.argmax(np.bincount(tags)))))
  return examples


class SequenceTrunk(keras.layers.Layer):
  """Token ids [batch, time] -> {"tokens": [batch, time, width], "pooled": [batch, width]}.

  `kind`: "transformer" (one pre-norm causal block with learned positions)
  or "gru"; both are causal, so a token's features never see the next token
  (the `next` head predicts it). Padding (id 0) is masked in attention and
  in the mean pooling.
  """

  def __init__(self, vocab_size, width=64, kind="transformer", num_heads=4, max_length=64,
               **kwargs):
    super().__init__(**kwargs)
    if kind not in ("transformer", "gru"):
      raise ValueError(f"experiment_params trunk: expected 'transformer' or 'gru'; received "
                       f"{kind!r}.")
    self.kind = kind
    self.embedding = keras.layers.Embedding(vocab_size, width)
    if kind == "gru":
      self.gru = keras.layers.GRU(width, return_sequences=True)
    else:
      self.positions = keras.layers.Embedding(max_length, width)
      self.attention_norm = keras.layers.LayerNormalization()
      self.attention = keras.layers.MultiHeadAttention(num_heads, width // num_heads)
      self.ffn_norm = keras.layers.LayerNormalization()
      self.ffn = keras.Sequential([keras.layers.Dense(2 * width, activation="gelu"),
                                   keras.layers.Dense(width)])

  def call(self, tokens, training=False):
    mask = keras.ops.not_equal(tokens, 0)
    x = self.embedding(tokens)
    if self.kind == "gru":
      # Causal, and padding comes after the tokens: no mask needed for them.
      x = self.gru(x, training=training)
    else:
      x = x + self.positions(keras.ops.arange(keras.ops.shape(tokens)[1]))[None]
      h = self.attention_norm(x)
      # Causal (a token sees itself and those before it), and never padding.
      time = keras.ops.shape(tokens)[1]
      causal = keras.ops.greater_equal(keras.ops.arange(time)[:, None],
                                       keras.ops.arange(time)[None, :])
      attend = keras.ops.logical_and(mask[:, None, :], causal[None])
      x = x + self.attention(h, h, attention_mask=attend, training=training)
      x = x + self.ffn(self.ffn_norm(x), training=training)
    weights = keras.ops.cast(mask, x.dtype)[..., None]
    pooled = keras.ops.sum(x * weights, axis=1) / keras.ops.maximum(
        keras.ops.sum(weights, axis=1), 1.0)
    return {"tokens": x, "pooled": pooled}


def sequences(vocab_size=64, max_length=24, width=64, trunk="transformer", large_vocab=False,
              bucket_boundaries=(9, 17), num_train_examples=4096, num_eval_examples=512):
  """Per-token tags, a pooled majority tag, optionally the next token (large vocabulary)."""
  if not isinstance(max_length, int) or max_length < 4:
    raise ValueError(f"experiment_params max_length: expected an integer >= 4; received "
                     f"{max_length!r}.")
  head_list = [heads_lib.SequenceSoftmaxHead("tags", 3, ignore_label=IGNORE, input="tokens"),
               heads_lib.SoftmaxHead("majority", 3, input="pooled")]
  if large_vocab:
    head_list.append(heads_lib.LargeVocabSoftmaxHead("next", vocab_size, ignore_label=IGNORE,
                                                     input="tokens"))

  def batches(split, count, batch_size, seed=None):
    examples = sequence_lists(split, count, vocab_size, max_length)
    lengths = np.array([len(tokens) for tokens, *_ in examples])

    def padded(column):
      array = np.full([count, max_length], IGNORE if column else 0, np.int64)
      for i, example in enumerate(examples):
        array[i, :lengths[i]] = example[column]
      return array
    keys = {"tags": 1, "next": 2} if large_vocab else {"tags": 1}
    columns = {"tokens": padded(0), **{key: padded(column) for key, column in keys.items()}}
    majority = np.array([example[3] for example in examples], np.int64)

    def cut(length, rows, majority):  # Each example at its own length.
      labels = {key: rows[key][:length] for key in keys}
      return rows["tokens"][:length], {**labels, "majority": majority}
    if split == "train":  # Shuffled indices: a small input position in checkpoints.
      rows = tf.nest.map_structure(tf.constant, (lengths, columns, majority))
      dataset = data.shuffled_indices(count, seed).map(
          lambda i: tf.nest.map_structure(lambda t: tf.gather(t, i), rows))
    else:
      dataset = tf.data.Dataset.from_tensor_slices((lengths, columns, majority))
    dataset = dataset.map(cut)
    padding = (tf.constant(0, tf.int64), {key: tf.constant(IGNORE if key != "majority" else 0,
                                                           tf.int64) for key in [*keys, "majority"]})
    boundaries = [b for b in bucket_boundaries if b <= max_length] + [max_length + 1]
    return dataset.bucket_by_sequence_length(
        lambda tokens, _: tf.shape(tokens)[0], boundaries,
        [batch_size] * (len(boundaries) + 1), padding_values=padding,
        pad_to_bucket_boundary=True, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  return Experiment(
      trunk=SequenceTrunk(vocab_size, width, trunk, max_length=max_length, name="trunk"),
      heads=head_list,
      train_data=lambda batch_size, seed: batches("train", num_train_examples, batch_size, seed),
      eval_data=lambda batch_size: batches("eval", num_eval_examples, batch_size),
      calibration_data=lambda batch_size: batches("calibration", num_eval_examples, batch_size))
