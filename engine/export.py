"""SavedModel export: a `serving_default` signature from raw features to every head's outputs.

Written with Keras's `ExportArchive`, not a bare `tf.saved_model.save` of a
`tf.Module`: only the former names the variables so that TensorFlow's
session-based loaders (`saved_model_cli run`, TF Serving) find them.

Exports appear atomically (`engine.atomic`): a crash mid-export leaves the
previous export (or nothing) at the path, never half a model.
"""

import json
import os

from absl import logging
import keras
import tensorflow as tf

from engine import atomic
from engine import config as config_lib

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


BEST_RECORD = "best_metric.json"  # In each best export: which metric, value and step.


def new_version_path(model_dir: str, step: int) -> str:
  """`model_dir/export/<step>`, or past the highest version if that one exists already
  (a model changed at the same step, e.g. calibrated: TF Serving loads only newer versions)."""
  root = tf.io.gfile.join(model_dir, "export")
  versions = [int(name.strip("/")) for name in (tf.io.gfile.listdir(root)
                                                if tf.io.gfile.isdir(root) else [])
              if name.strip("/").isdigit()]
  return tf.io.gfile.join(root, str(step if step not in versions else max(versions) + 1))


def best_export(model_dir: str):
  """The record {"metric", "value", "step", "goal"} of the best export so far, or None."""
  root = tf.io.gfile.join(model_dir, "export", "best")
  if not tf.io.gfile.isdir(root):
    return None
  versions = sorted(int(v.rstrip("/")) for v in tf.io.gfile.listdir(root)
                    if v.rstrip("/").isdigit())
  for version in reversed(versions):
    path = tf.io.gfile.join(root, str(version), BEST_RECORD)
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)
  return None


def export_if_best(model, features_spec, model_dir: str, metric: str, value: float, step: int,
                   lower_is_better: bool) -> bool:
  """Exports to `model_dir/export/best/<step>` if `value` beats the best so far; keeps one."""
  best = best_export(model_dir)
  if best is not None and not (value < best["value"] if lower_is_better else
                               value > best["value"]):
    return False
  root = tf.io.gfile.join(model_dir, "export", "best")
  record = {"metric": metric, "value": value, "step": step,
            "goal": "min" if lower_is_better else "max"}
  export_saved_model(model, features_spec, tf.io.gfile.join(root, str(step)),
                     extra_files={BEST_RECORD: json.dumps(record, indent=2) + "\n"})
  for version in tf.io.gfile.listdir(root):  # Keep the best only.
    version = version.rstrip("/")
    if version.isdigit() and int(version) != step:
      tf.io.gfile.rmtree(tf.io.gfile.join(root, version))
  return True


def keep_if_best(model, features_spec, config, results: dict, step: int):
  """With `config.best_metric`, exports the model if these results are its best so far."""
  metric = config.best_metric
  if metric is None:
    return
  lower = config_lib.lower_is_better(metric, config.best_metric_goal)
  if export_if_best(model, features_spec, config.model_dir, metric, results[metric], step, lower):
    logging.info("New best %s = %.6g at step %d: exported.", metric, results[metric], step)
