"""TFRecord input for real data: a declared feature spec, the heads' labels, shards.

Each `tf.train.Example` holds the features a `FeatureSpec` declares, each
head's label under the head's name (its first `label_specs`), and optionally
`<head>/weight` (a float; 1 when absent, 0 means "no label here"). Feature
kinds:
- `float`, `int`: a fixed-shape tensor (e.g. `[32]`, `[8, 4]`);
- `image`: PNG or JPEG bytes, decoded to `[H, W, C]` floats in [0, 1];
- `sequence`: a variable-length integer list, padded per batch (with 0).
Labels of variable length (per-token heads) are padded with the head's
`ignore_value`. Examples are checked as they are read: a missing key, a
wrong number of values or an undecodable image stops the run with an
error naming the file and the key.
"""

import collections
import os
import re

import numpy as np
import tensorflow as tf

KINDS = ("float", "int", "image", "sequence")
# Every file a record dataset was made from in this process, to name a damaged one.
_FILES_READ = set()
FeatureSpec = collections.namedtuple("FeatureSpec", ["kind", "shape"])


def parse_feature_specs(text: str) -> dict:
  """`name:kind[:shape]` items, e.g. `x:float:32,image:image:32x32x3,tokens:sequence`."""
  specs = {}
  for item in [part.strip() for part in text.split(",") if part.strip()]:
    fields = item.split(":")
    if len(fields) not in (2, 3) or fields[1] not in KINDS:
      raise ValueError(f"features: each feature is name:kind[:shape] with kind in {KINDS}, "
                       f"e.g. x:float:32 or image:image:32x32x3; received {item!r}.")
    name, kind = fields[:2]
    try:
      shape = tuple(int(d) for d in fields[2].split("x")) if len(fields) == 3 else ()
    except ValueError:
      raise ValueError(f"features: feature {name!r} has the shape {fields[2]!r}; expected "
                       "sizes joined by x, e.g. 32x32x3.") from None
    if kind != "sequence" and not shape or kind == "image" and len(shape) != 3:
      raise ValueError(f"features: feature {name!r} of kind {kind} needs a shape"
                       f"{' H x W x C' if kind == 'image' else ''}; received {item!r}.")
    specs[name] = FeatureSpec(kind, shape)
  if not specs:
    raise ValueError(f"features: at least one feature is needed; received {text!r}.")
  return specs


def _raw_spec(feature_specs, heads):
  """Every key as a variable-length feature: lengths are checked after parsing."""
  spec = {}
  for name, feature in feature_specs.items():
    spec[name] = tf.io.VarLenFeature(
        tf.float32 if feature.kind == "float" else tf.string if feature.kind == "image"
        else tf.int64)
  for head in heads:
    label = head.label_specs[0]
    spec[head.name] = tf.io.VarLenFeature(
        tf.int64 if label.dtype.is_integer else tf.float32)
    spec[f"{head.name}/weight"] = tf.io.FixedLenFeature([], tf.float32, default_value=1.0)
  return spec


def _checked(values, shape, file, key):
  """`values` (a 1-D tensor) reshaped to `shape`, or an error naming the file and key."""
  expected = int(np.prod(shape))
  check = tf.debugging.Assert(
      tf.equal(tf.size(values), expected),
      ["TFRecord file", file, f": key {key} must hold {expected} values (shape "
       f"{list(shape)}); this example has", tf.size(values),
       "(0: the key is missing)"], summarize=1)
  with tf.control_dependencies([check]):
    return tf.reshape(values, shape)


def _parser(feature_specs, heads):
  """serialized example, file -> (features, labels, weights), each key checked."""
  raw_spec = _raw_spec(feature_specs, heads)

  def parse(serialized, file):
    example = tf.io.parse_single_example(serialized, raw_spec)
    features = {}
    for name, feature in feature_specs.items():
      values = example[name].values
      if feature.kind == "image":
        encoded = _checked(values, [], file, name)
        magic = tf.strings.substr(encoded, 0, 4)
        known = tf.logical_or(tf.equal(magic, b"\x89PNG"),
                              tf.equal(tf.strings.substr(magic, 0, 3), b"\xff\xd8\xff"))
        check = tf.debugging.Assert(known, ["TFRecord file", file, f": key {name} must hold "
                                            "PNG or JPEG bytes; the bytes of this example begin with",
                                            magic])
        with tf.control_dependencies([check]):
          image = tf.io.decode_image(encoded, channels=feature.shape[2],
                                     expand_animations=False)
        check = tf.debugging.Assert(
            tf.reduce_all(tf.equal(tf.shape(image)[:2], feature.shape[:2])),
            ["TFRecord file", file, f": image {name} must be {list(feature.shape)}; it is",
             tf.shape(image)])
        with tf.control_dependencies([check]):
          features[name] = tf.image.convert_image_dtype(image, tf.float32)
      elif feature.kind == "sequence":
        features[name] = values
      else:
        features[name] = _checked(values, feature.shape, file, name)
    labels, weights = {}, {}
    for head in heads:
      label = head.label_specs[0]
      values = tf.cast(example[head.name].values, label.dtype)
      labels[head.name] = (values if None in label.shape
                           else _checked(values, label.shape, file, head.name))
      weights[head.name] = example[f"{head.name}/weight"]
    return features, labels, weights
  return parse


def _padding(heads, element_spec):
  """padded_batch's values: 0 for features and weights, `ignore_value` for labels."""
  features = {name: tf.constant(0, spec.dtype) for name, spec in element_spec[0].items()}
  labels = {}
  for head in heads:
    label = head.label_specs[0]
    ignore = label.ignore_value if label.ignore_value is not None else 0
    labels[head.name] = tf.constant(ignore, label.dtype)
  return features, labels, {head.name: tf.constant(0.0) for head in heads}


def dataset(file_pattern: str, feature_specs, heads, batch_size: int, training: bool,
            shuffle_seed=0, shuffle_buffer: int = 10_000) -> tf.data.Dataset:
  """Batches of (features dict, labels, sample_weights) from TFRecord files.

  `feature_specs` is a dict name -> FeatureSpec or the text
  `parse_feature_specs` reads. Training data is shuffled and repeated, its
  batches all full; eval data is read once, in order.
  """
  if isinstance(feature_specs, str):
    feature_specs = parse_feature_specs(feature_specs)
  files = sorted(tf.io.gfile.glob(file_pattern))
  if not files:
    raise ValueError(f"No TFRecord files match {file_pattern!r}.")
  for head in heads:
    if head.name in feature_specs:
      raise ValueError(f"Head '{head.name}': its label key is also a feature name; rename one.")
  _FILES_READ.update(files)
  parse = _parser(feature_specs, heads)
  records = tf.data.Dataset.from_tensor_slices(files).interleave(
      lambda file: tf.data.TFRecordDataset(file).map(lambda record: (record, file)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if training:
    records = records.shuffle(shuffle_buffer, seed=shuffle_seed).repeat()
  examples = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  batches = examples.padded_batch(batch_size, drop_remainder=training,
                                  padding_values=_padding(heads, examples.element_spec))
  return batches.prefetch(tf.data.AUTOTUNE)


def data_loss_message(error: tf.errors.DataLossError) -> str:
  """What a DataLossError (a record failing its checksum) means, naming the damaged files.

  TensorFlow's message names no file; the files read in this process are
  checked one by one (only now, after the error) to find them.
  """
  damaged = []
  for path in sorted(_FILES_READ):
    count = 0
    try:
      for _ in tf.data.TFRecordDataset(path):
        count += 1
    except tf.errors.DataLossError as file_error:
      damaged.append(f"{path} (after {count} good records: {_what(file_error)})")
  where = ("; ".join(damaged) if damaged else
           "no TFRecord file read by engine.records is damaged; it came from another input")
  return f"The input data is damaged ({_what(error)}): {where}."


def _what(error) -> str:
  """TensorFlow's words for the damage ("corrupted record at 476"), without its traceback."""
  found = re.search(r"(corrupted|truncated)[^\n\]\[]*", error.message)
  return found.group(0).strip() if found else error.message.strip().splitlines()[-1]


def _feature(values):
  values = np.asarray(values)
  if values.dtype.kind in "SOU":
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[
        v if isinstance(v, bytes) else str(v).encode() for v in values.reshape(-1)]))
  if values.dtype.kind in "iub":
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values.reshape(-1)))
  return tf.train.Feature(float_list=tf.train.FloatList(value=values.reshape(-1)))


def write_tfrecords(arrays: dict, path_prefix: str, num_shards: int = 1,
                    lengths: dict = None) -> list:
  """Writes `tf.train.Example` shards `<prefix>-0000i-of-0000n` from arrays; returns paths.

  `arrays` maps each key (feature, head label, `<head>/weight`) to an array
  with one row per example: numbers (any shape per example), bytes (an
  encoded image per example), or a padded integer array whose true lengths
  `lengths[key]` gives (variable-length sequences and per-token labels).
  """
  sizes = {key: len(value) for key, value in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"write_tfrecords: every array needs one row per example; the row "
                     f"counts are {sizes}.")
  count = next(iter(sizes.values()))
  lengths = lengths or {}
  unknown = sorted(set(lengths) - set(arrays))
  if unknown:
    raise ValueError(f"write_tfrecords: lengths names keys without an array: {unknown}.")
  if os.path.dirname(path_prefix):
    tf.io.gfile.makedirs(os.path.dirname(path_prefix))
  paths = [f"{path_prefix}-{shard:05d}-of-{num_shards:05d}" for shard in range(num_shards)]
  for shard, path in enumerate(paths):
    with tf.io.TFRecordWriter(path) as writer:
      for row in range(shard, count, num_shards):
        feature = {key: _feature(value[row][:lengths[key][row]] if key in lengths
                                 else value[row]) for key, value in arrays.items()}
        writer.write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
  return paths


LENGTH_SUFFIX = "/length"


def write_tfrecords_from_npz(npz_path: str, path_prefix: str, num_shards: int = 1) -> list:
  """`write_tfrecords` of the arrays in an .npz file; `<key>/length` arrays give lengths."""
  try:
    with np.load(npz_path, allow_pickle=True) as loaded:
      arrays = {key: loaded[key] for key in loaded.files}
  except (OSError, ValueError) as error:
    raise ValueError(f"{npz_path}: not a readable .npz file ({error}).") from error
  lengths = {key[:-len(LENGTH_SUFFIX)]: arrays.pop(key) for key in list(arrays)
             if key.endswith(LENGTH_SUFFIX)}
  return write_tfrecords(arrays, path_prefix, num_shards, lengths)
