"""TFRecord shards written from arrays and read back with a feature spec and the heads."""

import re

import numpy as np
import pytest
import tensorflow as tf

import engine
import engine.experiments.tfrecord  # pylint: disable=unused-import (FlatTrunk)
import heads


def _png(value, size=4):
  return tf.io.encode_png(tf.fill([size, size, 3], tf.constant(value, tf.uint8))).numpy()


def _arrays():
  """Six examples: a float vector, an image, a token sequence, per-token tags."""
  lengths = np.array([1, 2, 3, 4, 5, 6])
  tokens = np.zeros([6, 6], np.int64)
  for i, length in enumerate(lengths):
    tokens[i, :length] = np.arange(1, length + 1) + i
  return {
      "x": np.arange(12, dtype=np.float32).reshape(6, 2),
      "image": np.array([_png(10 * i) for i in range(6)], dtype=object),
      "tokens": tokens,
      "tags": tokens % 3,
      "digit": np.arange(6) % 4,
      "digit/weight": np.array([1, 1, 0, 1, 1, 1], np.float32),
  }, {"tokens": lengths, "tags": lengths}


_SPECS = "x:float:2,image:image:4x4x3,tokens:sequence"


def _heads():
  return [heads.SoftmaxHead("digit", 4), heads.SequenceSoftmaxHead("tags", 3, ignore_label=-1)]


def test_written_shards_read_back_with_images_decoded_and_sequences_padded(tmp_path):
  arrays, lengths = _arrays()
  paths = engine.data.write_tfrecords(arrays, str(tmp_path / "data" / "train"), num_shards=2,
                                      lengths=lengths)
  assert [p.rsplit("/", 1)[1] for p in paths] == ["train-00000-of-00002",
                                                   "train-00001-of-00002"]
  dataset = engine.data.tfrecord(str(tmp_path / "data" / "train-*"), _SPECS, _heads(),
                                 batch_size=6, training=False)
  (feature, label, weight), = list(dataset)  # One batch of all six examples.
  rows = [int(v) // 2 for v in feature["x"][:, 0].numpy()]
  assert sorted(rows) == list(range(6))
  np.testing.assert_array_equal(feature["x"].numpy(), arrays["x"][rows])
  np.testing.assert_allclose(feature["image"][:, 0, 0, 0], np.array(rows) * 10 / 255, rtol=1e-6)
  assert feature["tokens"].shape == (6, 6)  # Padded to the longest sequence.
  for i, row in enumerate(rows):
    n = lengths["tokens"][row]
    np.testing.assert_array_equal(feature["tokens"][i, :n], arrays["tokens"][row, :n])
    np.testing.assert_array_equal(feature["tokens"][i, n:], 0)
    np.testing.assert_array_equal(label["tags"][i, :n], arrays["tags"][row, :n])
    np.testing.assert_array_equal(label["tags"][i, n:], -1)  # The head's ignore_label.
    assert label["digit"][i] == row % 4
    assert weight["digit"][i] == (0 if row == 2 else 1) and weight["tags"][i] == 1
  short = next(iter(engine.data.tfrecord(str(tmp_path / "data" / "train-00000*"), _SPECS,
                                         _heads(), batch_size=2, training=False)))
  assert short[0]["tokens"].shape == (2, 3)  # Rows 0 and 2: padded per batch.


@pytest.mark.parametrize("damage,message", [
    ("missing", r"key x must hold 2 values \(shape \[2\]\); this example has\] \[0\]"),
    ("length", r"key x must hold 2 values \(shape \[2\]\); this example has\] \[3\]"),
    ("image", r"key image must hold PNG or JPEG bytes; the bytes of this example begin with\] \[not \]"),
])
def test_bad_examples_name_the_file_and_the_key(tmp_path, damage, message):
  arrays, lengths = _arrays()
  if damage == "missing":
    del arrays["x"]
  elif damage == "length":
    arrays["x"] = np.zeros([6, 3], np.float32)
  else:
    arrays["image"] = np.array([b"not an image"] * 6, dtype=object)
  engine.data.write_tfrecords(arrays, str(tmp_path / "bad"), lengths=lengths)
  dataset = engine.data.tfrecord(str(tmp_path / "bad-*"), _SPECS, _heads(), batch_size=3,
                                 training=False)
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    next(iter(dataset))
  text = str(error.value)
  assert re.search(message, text), text
  assert "bad-00000-of-00001" in text


def test_spec_and_pattern_errors_name_what_is_wrong(tmp_path):
  with pytest.raises(ValueError, match=r"No TFRecord files match '.*nothing-\*'"):
    engine.data.tfrecord(str(tmp_path / "nothing-*"), "x:float:2", [], 2, training=False)
  with pytest.raises(ValueError, match=r"feature 'image' of kind image needs a shape H x W x C"):
    engine.records.parse_feature_specs("image:image:4x4")
  with pytest.raises(ValueError, match=r"each feature is name:kind\[:shape\]"):
    engine.records.parse_feature_specs("x:floats:2")
  with pytest.raises(ValueError, match=r"one row per example; the row counts are"):
    engine.data.write_tfrecords({"a": np.zeros(3), "b": np.zeros(4)}, str(tmp_path / "w"))


def test_a_corrupt_record_names_its_file_and_keeps_the_steps_trained(make_trainer, tmp_path):
  x, labels = engine.data.synthetic_arrays("train", 512)
  paths = engine.data.write_tfrecords({"features": x, **labels}, str(tmp_path / "train"),
                                      num_shards=2)
  damaged = bytearray(open(paths[1], "rb").read())
  damaged[int(len(damaged) * 0.9)] ^= 0xFF  # A record near the end of the second shard.
  open(paths[1], "wb").write(bytes(damaged))
  head_list = heads.parse_heads(engine.data.DEMO_HEADS)
  specs = engine.records.parse_feature_specs("features:float:32")
  trainer = make_trainer(trunk=engine.experiments.tfrecord.FlatTrunk(specs, (16,)),
                         head_list=head_list, steps_per_loop=10)
  dataset = engine.data.tfrecord(str(tmp_path / "train-*"), specs, head_list, batch_size=16,
                                 training=True, shuffle_buffer=1)
  with pytest.raises(ValueError) as error:
    trainer.train(dataset, steps=100)
  message = str(error.value)
  assert re.search(r"The input data is damaged \(corrupted record at \d+\): .*train-00001-of-"
                   r"00002 \(after \d+ good records", message), message
  assert "train-00000-of-00002" not in message
  step = trainer.step
  assert 10 < step < 32 and message.endswith(f"Training stopped at step {step} (saved).")
  assert tf.train.latest_checkpoint(trainer.config.model_dir).endswith(f"ckpt-{step}")
