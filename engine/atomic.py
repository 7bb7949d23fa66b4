"""Files and directories that appear whole or not at all.

Readers (TF Serving watching an export directory, a dashboard reading a
metrics file, a resumed run) must never see half a write. Everything is
written aside under a hidden name in the same directory, then renamed into
place; a crash before the rename leaves the previous version untouched.
"""

import contextlib
import json
import os

import tensorflow as tf


def _aside(path: str, kind: str) -> str:
  parent, name = os.path.split(os.path.normpath(path))
  return os.path.join(parent, f".{name}.{kind}-{os.getpid()}")


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path`, replacing any previous file atomically."""
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  staging = _aside(path, "tmp")
  with tf.io.gfile.GFile(staging, "w") as handle:
    handle.write(text)
  tf.io.gfile.rename(staging, path, overwrite=True)


def write_json(path: str, value) -> None:
  """Writes `value` as JSON to `path`, replacing any previous file atomically."""
  write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def directory(path: str):
  """Yields a staging directory to fill; on success it replaces `path`.

  If the body raises, the staging directory is removed and `path` keeps
  its previous content. The old directory is moved aside, the new one
  renamed in, then the old one deleted: on a local file system each step is
  one rename, so `path` is only ever missing for the instant between the two.
  """
  staging, replaced = _aside(path, "tmp"), _aside(path, "old")
  tf.io.gfile.makedirs(os.path.dirname(os.path.normpath(path)))
  for leftover in (staging, replaced):
    if tf.io.gfile.exists(leftover):
      tf.io.gfile.rmtree(leftover)
  try:
    yield staging
  except BaseException:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.rmtree(staging)
    raise
  if tf.io.gfile.exists(path):
    tf.io.gfile.rename(path, replaced)
  tf.io.gfile.rename(staging, path)
  if tf.io.gfile.exists(replaced):
    tf.io.gfile.rmtree(replaced)
