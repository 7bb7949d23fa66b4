r"""Writes TFRecord shards of tf.train.Example from an .npz file, for --experiment=tfrecord.

  python scripts/write_tfrecords.py --npz=train.npz --output=data/train --num_shards=4
  # -> data/train-00000-of-00004 ... ; then
  python scripts/train.py --experiment=tfrecord --model_dir=runs/tfr \
      --experiment_params="train_data='data/train-*',features='features:float:32'"

The .npz holds one array per key, one row per example: each feature, each
head's label (under the head's name), optionally `<head>/weight`. Encoded
images are an object array of bytes; a variable-length key (a sequence, or
per-token labels) is a padded integer array with its true lengths in
`<key>/length`. From Python: `engine.data.write_tfrecords(arrays, prefix)`.
"""

from absl import app
from absl import flags

import engine

_NPZ = flags.DEFINE_string("npz", None, "The .npz file of arrays.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Path prefix of the shards.", required=True)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "How many shards to write.", lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for path in engine.records.write_tfrecords_from_npz(_NPZ.value, _OUTPUT.value,
                                                      _NUM_SHARDS.value):
    print(path)


if __name__ == "__main__":
  app.run(main)
