"""TFRecord files of tf.train.Example (`engine.records`) through a Dense trunk.

Every declared feature is flattened and concatenated (images as pixels,
sequences as the mean of a learned embedding), then Dense layers: a baseline
for any data in the format; a real model for it is an experiment of its own
that reads the same files with `engine.data.tfrecord`.
"""

import keras

from engine import data
from engine import records
from engine.experiment import Experiment
from engine.experiments import parts


class FlatTrunk(keras.layers.Layer):
  """A dict of features -> one [batch, width] tensor (embedded sequences) -> Dense layers."""

  def __init__(self, feature_specs, hidden_units, vocabulary_size=1024, embedding_width=32,
               **kwargs):
    super().__init__(**kwargs)
    self.names = sorted(feature_specs)
    self.dense = parts.dense_trunk(hidden_units)
    self.embeddings = {name: keras.layers.Embedding(vocabulary_size, embedding_width,
                                                    mask_zero=True, name=f"{name}_embedding")
                       for name in self.names if feature_specs[name].kind == "sequence"}
    self.pool = keras.layers.GlobalAveragePooling1D()

  def call(self, features):
    flat = []
    for name in self.names:
      if name in self.embeddings:
        embedded = self.embeddings[name](features[name])
        flat.append(self.pool(embedded, mask=self.embeddings[name].compute_mask(features[name])))
      else:
        flat.append(keras.ops.reshape(keras.ops.cast(features[name], "float32"),
                                      (keras.ops.shape(features[name])[0], -1)))
    return self.dense(keras.ops.concatenate(flat, axis=-1))


def tfrecord(train_data, eval_data=None, calibration_data=None, features=f"features:float:{data.NUM_FEATURES}",
             heads=data.DEMO_HEADS, hidden_units=(128, 128), weighting="static",
             weight_schedules=None, weighting_options=None, shuffle_buffer=10_000,
             vocabulary_size=1024):
  """`train_data`, `eval_data` and `calibration_data` (for calibrate.py): file patterns;
  `features`: name:kind[:shape] items."""
  feature_specs = records.parse_feature_specs(features)
  head_list = parts.heads_from_text(heads, weighting, weight_schedules, weighting_options)
  return Experiment(
      trunk=FlatTrunk(feature_specs, hidden_units, vocabulary_size, name="trunk"),
      heads=head_list,
      train_data=lambda batch_size, seed: records.dataset(
          train_data, feature_specs, head_list, batch_size, training=True, shuffle_seed=seed,
          shuffle_buffer=shuffle_buffer),
      eval_data=None if eval_data is None else lambda batch_size: records.dataset(
          eval_data, feature_specs, head_list, batch_size, training=False),
      calibration_data=None if calibration_data is None else lambda batch_size: records.dataset(
          calibration_data, feature_specs, head_list, batch_size, training=False))
