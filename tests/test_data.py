"""The synthetic data's promised structure."""


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
