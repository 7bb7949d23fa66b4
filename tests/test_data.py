"""The synthetic data's promised structure, and TFRecords parsed from label specs."""


import numpy as np
import tensorflow as tf

import engine
import heads


def test_synthetic_data_is_deterministic_and_has_its_documented_structure():
  x, labels = engine.data.synthetic_arrays("train", 4096)
  x2, labels2 = engine.data.synthetic_arrays("train", 4096)
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(labels["box"], labels2["box"])
  np.testing.assert_array_equal(labels["parity"], labels["digit"] % 2)
  frequencies = np.bincount(labels["digit"], minlength=10) / 4096
  assert frequencies.min() > 0.03 and frequencies.max() < 0.2  # All classes occur.
  eval_x, _ = engine.data.synthetic_arrays("eval", 16)
  assert not np.allclose(eval_x, x[:16])
  assert x.dtype == np.float32 and labels["box"].dtype == np.float32


def test_synthetic_training_batches_are_full_and_repeat():
  dataset = engine.data.synthetic("train", 48, num_examples=100)
  shapes = [batch[0].shape[0] for batch in dataset.take(5)]
  assert shapes == [48] * 5


def _write(path, rows):
  with tf.io.TFRecordWriter(path) as writer:
    for features, digit, box, weight in rows:
      feature = {
          "features": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
          "digit": tf.train.Feature(int64_list=tf.train.Int64List(value=[digit])),
          "box": tf.train.Feature(float_list=tf.train.FloatList(value=box)),
      }
      if weight is not None:
        feature["digit/weight"] = tf.train.Feature(float_list=tf.train.FloatList(value=[weight]))
      writer.write(tf.train.Example(
          features=tf.train.Features(feature=feature)).SerializeToString())


def test_tfrecords_are_parsed_with_the_heads_label_specs(tmp_path):
  rows = [([float(i)] * 3, i % 4, [i, -i], 0.0 if i == 2 else None) for i in range(6)]
  _write(str(tmp_path / "part-0.tfrecord"), rows[:3])
  _write(str(tmp_path / "part-1.tfrecord"), rows[3:])
  head_list = [heads.SoftmaxHead("digit", 4), heads.RegressionHead("box", 2)]
  dataset = engine.data.tfrecord(str(tmp_path / "part-*"), head_list, num_features=3,
                                 batch_size=6, training=False)
  features, labels, weights = next(iter(dataset))
  np.testing.assert_array_equal(features[:, 0], np.arange(6))
  np.testing.assert_array_equal(labels["digit"], np.arange(6) % 4)
  assert labels["digit"].dtype == tf.int64
  np.testing.assert_array_equal(labels["box"][:, 1], -np.arange(6))
  np.testing.assert_array_equal(weights["digit"], [1, 1, 0, 1, 1, 1])
  np.testing.assert_array_equal(weights["box"], np.ones(6))


def test_tfrecord_pattern_matching_nothing_names_it(tmp_path):
  import pytest  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match=r"No TFRecord files match '.*nothing-\*'"):
    engine.data.tfrecord(str(tmp_path / "nothing-*"), [], 3, 2, training=False)


def test_tfrecord_refuses_variable_length_labels_naming_the_head(tmp_path):
  import pytest  # pylint: disable=import-outside-toplevel
  _write(str(tmp_path / "part-0.tfrecord"), [([0.0] * 3, 0, [0, 0], None)])
  with pytest.raises(ValueError, match=r"Head 'tags': TFRecord input reads fixed-shape labels"):
    engine.data.tfrecord(str(tmp_path / "part-*"), [heads.SequenceSoftmaxHead("tags", 4)], 3, 2,
                         training=False)
