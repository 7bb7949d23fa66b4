"""SavedModel export: a `serving_default` signature from raw features to every head's outputs.

Written with Keras's `ExportArchive`, not a bare `tf.saved_model.save` of a
`tf.Module`: only the former names the variables so that TensorFlow's
session-based loaders (`saved_model_cli run`, TF Serving) find them.

Exports appear atomically (`engine.atomic`): a crash mid-export leaves the
previous export (or nothing) at the path, never half a model.
"""

import os

import keras
import tensorflow as tf

from engine import atomic

SIGNATURE = "serving_default"


def serving_outputs(model, features) -> dict:
  """{"<head>/<output>": tensor} for every head of `model`, as `head.predict` gives them.

  The normaliser (and a head's temperature) is applied here, once.
  """
  logits = model(features, training=False)
  outputs = {}
  for head in model.head_list:
    for key, value in head.predict(logits[head.name]).items():
      outputs[f"{head.name}/{key}"] = value
  return outputs


def serving_signature(features_spec):
  """The serving input spec: the training features with any batch size, named.

  A single tensor is the input "features"; a dict of features keeps its keys.
  """
  def any_batch(spec, name):
    return tf.TensorSpec([None, *spec.shape[1:]], spec.dtype, name=name)
  if isinstance(features_spec, dict):
    return {key: any_batch(spec, key) for key, spec in features_spec.items()}
  return any_batch(features_spec, "features")


def export_saved_model(model, features_spec, path: str, extra_files=None) -> str:
  """Writes `model`'s serving SavedModel to `path` atomically and returns `path`.

  `extra_files` ({name: text}) are written into the SavedModel's directory
  with it, e.g. the metric that made it the best export.
  """
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(SIGNATURE, lambda features: serving_outputs(model, features),
                       input_signature=[serving_signature(features_spec)])
  with atomic.directory(path) as staging:
    archive.write_out(staging, verbose=False)
    for name, text in (extra_files or {}).items():
      with tf.io.gfile.GFile(os.path.join(staging, name), "w") as handle:
        handle.write(text)
  return path
