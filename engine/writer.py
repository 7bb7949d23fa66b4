"""One writer per model_dir: a lock file, and the leftovers the writer clears when it starts.

Two trainers writing one model_dir overwrite each other's checkpoints and
both exit 0. A Trainer takes `model_dir/writer.lock` while it trains or
saves (its process, host and start time in the file) and removes it when it
is done; a second writer fails at once, naming the holder. A lock whose
process is gone (same host, no such process, or another process under its
id) is stale: it is taken over with a warning. Readers (evaluate, export)
take no lock. In a multi-worker job the chief holds it.

Whoever holds the lock is the only writer, so it may remove what killed
writers left: `ckpt-N_temp` directories of interrupted saves and the hidden
staging directories of interrupted atomic writes (`engine.atomic`).
"""

import json
import os
import socket
import time

from absl import logging
import tensorflow as tf

FILENAME = "writer.lock"


def _start_time(pid: int):
  """The process's start time since boot (Linux), which tells a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
      return int(handle.read().rsplit(")", 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _alive(holder: dict) -> bool:
  """Whether the process that wrote `holder` may still run (True when it cannot be told)."""
  if not holder:
    return False  # Unreadable: half written by a killed process.
  if holder.get("host") != socket.gethostname():
    return True
  pid = holder.get("pid")
  if not isinstance(pid, int):
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  started = _start_time(pid)
  return started is None or holder.get("started") in (None, started)


class WriterLock:
  """The lock of one model_dir; `acquire` and `release` may repeat (re-entrant count)."""

  def __init__(self, model_dir: str):
    self.path = os.path.join(model_dir, FILENAME)
    self._model_dir = model_dir
    self._depth = 0

  @property
  def held(self) -> bool:
    return self._depth > 0

  def acquire(self):
    if self._depth:
      self._depth += 1
      return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
          "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for _ in range(2):
      try:
        self._create(json.dumps(me))
        break
      except FileExistsError:
        holder = self._holder()
        if _alive(holder):
          raise RuntimeError(
              f"model_dir={self._model_dir} is being written by another trainer: process "
              f"{holder.get('pid')} on {holder.get('host')} since {holder.get('time')} "
              f"({self.path}). Wait for it, stop it, or use another model_dir; if that process "
              "is gone, remove the lock file.") from None
        logging.warning("Taking over the stale lock %s of process %s on %s (gone).", self.path,
                        holder.get("pid"), holder.get("host"))
        tf.io.gfile.remove(self.path)
    else:
      raise RuntimeError(f"Cannot take the lock {self.path}: another process keeps taking it.")
    self._depth = 1
    remove_leftovers(self._model_dir)

  def _create(self, text: str):
    if "://" not in self.path:  # A local file system: creation is atomic.
      with open(self.path, "x", encoding="utf-8") as handle:
        handle.write(text)
      return
    staging = f"{self.path}.{os.getpid()}"
    with tf.io.gfile.GFile(staging, "w") as handle:
      handle.write(text)
    try:
      tf.io.gfile.rename(staging, self.path, overwrite=False)
    except tf.errors.AlreadyExistsError:
      tf.io.gfile.remove(staging)
      raise FileExistsError(self.path) from None

  def _holder(self) -> dict:
    try:
      with tf.io.gfile.GFile(self.path) as handle:
        return json.loads(handle.read())
    except (tf.errors.OpError, ValueError):
      return {}  # Unreadable (half written by a killed process): stale.

  def release(self):
    if not self._depth:
      return
    self._depth -= 1
    if not self._depth and tf.io.gfile.exists(self.path):
      tf.io.gfile.remove(self.path)

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *unused):
    self.release()


def _staging_of_a_live_process(path: str) -> bool:
  """Whether `path` is an atomic write's staging (`.name.tmp-PID`) whose process runs."""
  pid = path.rsplit("-", 1)[-1]
  if "_temp" in os.path.basename(path) or not pid.isdigit():
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError):
    return True
  return True


def remove_leftovers(model_dir: str):
  """Removes what interrupted saves and atomic writes left in model_dir (and export/)."""
  patterns = ["ckpt-*_temp*", ".*.tmp-*", ".*.old-*", "export/.*.tmp-*", "export/.*.old-*",
              "export/best/.*.tmp-*", "export/best/.*.old-*"]
  for pattern in patterns:
    for leftover in tf.io.gfile.glob(os.path.join(model_dir, pattern)):
      if _staging_of_a_live_process(leftover):
        continue  # This process's, or a reader's at work (export.py takes no lock).
      logging.info("Removing %s, left by an interrupted write.", leftover)
      if tf.io.gfile.isdir(leftover):
        tf.io.gfile.rmtree(leftover)
      else:
        tf.io.gfile.remove(leftover)
