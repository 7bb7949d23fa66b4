"""Checkpoints of a Trainer: what they hold, where they go, and restoring them.

A checkpoint holds every model variable and optimizer slot under its name
(`engine.checkpoint_names`: `model/trunk/...`, `model/heads/<head>/...`,
`optimizer/slots/...`), the step counters (the per-head ones by head name),
and the training input's position on one device. Restoring matches names
(`engine.checkpoint_restore`). A checkpoint that cannot be read is skipped
for the one before it; the run's writer also moves it aside into
`model_dir/damaged/`, so it stops counting and the next save at its step
writes a good one. Every worker of a multi-worker job takes part in a save
(it is collective), but only the chief writes into `model_dir`; the others
write into `model_dir/.worker-N`. All restore from `model_dir`.
"""

import os
import socket

from absl import logging
import tensorflow as tf

from engine import checkpoint_names
from engine import checkpoint_restore
from engine import iterators

# What a truncated or missing file raises while reading ("Read less bytes than requested").
DAMAGE = (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
          tf.errors.OutOfRangeError, IndexError)
_ITERATOR_KEY = "train_iterator/.ATTRIBUTES/ITERATOR_STATE"


class Checkpoints:
  """The Trainer's tf.train.Checkpoint and its manager.

  Args:
    model: the MultiHeadModel.
    optimizer: the optimizer (with its slots, iteration count and loss scale).
    strategy: the tf.distribute strategy (its chief writes into model_dir).
    counters: {name: variable} of step counters to save; "global_step" numbers
      the checkpoints, "nonfinite_losses" (one entry per head) is saved by head name.
    model_dir: where checkpoints are read from (and written, on the chief).
    max_to_keep: checkpoints kept.
    partial_restore: restore a checkpoint that has heads this model lacks.
  """

  def __init__(self, *, model, optimizer, strategy, counters: dict, model_dir: str,
               max_to_keep: int, partial_restore: bool = False):
    self.own_dir = model_dir if strategy.extended.should_checkpoint else (
        tf.io.gfile.join(model_dir, f".worker-{strategy.cluster_resolver.task_id}"))
    self._model, self._optimizer, self._counters = model, optimizer, dict(counters)
    self._model_dir, self._max_to_keep, self._partial = model_dir, max_to_keep, partial_restore
    self._per_head = None  # {head name: int64 variable}: nonfinite_losses by name.
    self.checkpoint = self.manager = self.variables = None
    self.restored = None  # The checkpoint the model was restored from.
    self._train_input = None  # (dataset, iterator) of the last `train_iterator` call.

  def bind(self):
    """Names every variable (they exist once the model and optimizer are built)."""
    model_variables = checkpoint_names.flatten(checkpoint_names.model_tree(self._model))
    paths = {id(variable): path for path, variable in model_variables.items()}
    optimizer = checkpoint_names.flatten(
        checkpoint_names.optimizer_tree(self._optimizer, paths))
    self._per_head = {name: tf.Variable(0, dtype=tf.int64, trainable=False)
                      for name in self._model.head_names}
    counters = {name: variable for name, variable in self._counters.items()
                if name != "nonfinite_losses"}
    counters.update({f"nonfinite_losses/{name}": variable
                     for name, variable in self._per_head.items()})
    self.variables = {**{f"model/{p}": v for p, v in model_variables.items()},
                      **{f"optimizer/{p}": v for p, v in optimizer.items()}, **counters}
    self.checkpoint = tf.train.Checkpoint(**checkpoint_names.nest(self.variables))
    self._new_manager()

  def _new_manager(self):
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self.own_dir, max_to_keep=self._max_to_keep,
        step_counter=self._counters["global_step"])

  @property
  def latest(self):
    """Path of the newest checkpoint in model_dir, or None."""
    return tf.train.latest_checkpoint(self._model_dir)

  def _listed(self) -> list:
    state = tf.train.get_checkpoint_state(self._model_dir)
    return list(state.all_model_checkpoint_paths) if state else []

  def restore_latest_readable(self, move_damaged: bool):
    """Restores the newest checkpoint that can be read, warning about damaged newer ones.

    A truncated or missing file (a crash while saving, a full disk) makes
    TensorFlow raise a data-loss or not-found error: the next older
    checkpoint is tried, and with `move_damaged` (the run's writer) the
    damaged one is moved aside. A checkpoint of another model is not damage:
    it stops with an error saying what differs.
    """
    listed = self._listed()
    for path in reversed(listed):
      try:
        self._restore(path)
      except DAMAGE as error:
        logging.warning("Checkpoint %s is damaged and was skipped (%s): %s", path,
                        type(error).__name__, str(error).splitlines()[0])
        if move_damaged:
          self._move_aside(path)
        continue
      logging.info("Restored %s at step %d.", path,
                   int(self._counters["global_step"].numpy()))
      return
    if listed:
      logging.warning("No readable checkpoint in %s: starting from scratch.", self._model_dir)

  def restore(self, path: str):
    """Restores one given checkpoint (e.g. to evaluate it)."""
    try:
      self._restore(path)
    except DAMAGE as error:
      raise ValueError(f"Cannot read the checkpoint {path}: "
                       f"{str(error).splitlines()[0]}") from None

  def _restore(self, path: str):
    saved = checkpoint_restore.saved_shapes(path)
    chosen = checkpoint_restore.for_resume(path, saved, self.variables, self._partial)
    checkpoint_restore.restore(path, chosen)
    counts = [variable.numpy() for variable in self._per_head.values()]
    self._counters["nonfinite_losses"].assign(tf.constant(counts, tf.int64))
    self.restored = path

  def warm_start(self, source: str, modules):
    """Initialises `modules` ("trunk", head names) from another run's checkpoint or model_dir."""
    path = source
    if tf.io.gfile.isdir(source):
      path = tf.train.latest_checkpoint(source)
      if path is None:
        raise ValueError(f"init_checkpoint={source}: that directory holds no checkpoint.")
    try:
      saved = checkpoint_restore.saved_shapes(path)
      checkpoint_restore.restore(path, checkpoint_restore.for_warm_start(
          source, saved, self.variables, modules))
    except DAMAGE as error:
      raise ValueError(f"init_checkpoint={source}: cannot read {path} "
                       f"({str(error).splitlines()[0]}).") from None
    logging.info("Warm-started %s from %s.", list(modules), path)

  def _move_aside(self, path: str):
    """Moves a damaged checkpoint's files into model_dir/damaged/ and forgets it."""
    aside = tf.io.gfile.join(self._model_dir, "damaged")
    tf.io.gfile.makedirs(aside)
    for name in tf.io.gfile.glob(f"{path}.*"):
      target = tf.io.gfile.join(aside, os.path.basename(name))
      tf.io.gfile.rename(name, target, overwrite=True)
    kept = [p for p in self._listed() if p != path]
    if kept:
      tf.compat.v1.train.update_checkpoint_state(self._model_dir, kept[-1], kept)
    else:
      tf.io.gfile.remove(tf.io.gfile.join(self._model_dir, "checkpoint"))
    logging.warning("Moved the damaged checkpoint %s into %s.", path, aside)
    self._new_manager()

  def train_iterator(self, dataset, strategy, attach: bool):
    """The iterator of the last call if `dataset` is the same object (it goes on where
    it stopped), else a new one, positioned from the restored checkpoint if `attach`."""
    if self._train_input is not None and self._train_input[0] is dataset:
      return self._train_input[1]
    # One replica: a plain tf.data iterator, which checkpoints its position.
    def new():
      return iter(dataset if strategy.num_replicas_in_sync == 1
                  else strategy.experimental_distribute_dataset(dataset))
    iterator = new()
    if attach and isinstance(iterator, tf.data.Iterator):
      if not self._position_restored(iterator):
        iterator = new()  # A failed restore may leave the iterator half set.
      self.checkpoint.train_iterator = iterator
    if self._train_input is not None:  # The old iterator is destroyed off this thread.
      holder, self._train_input = [self._train_input[1]], None
      iterators.release(holder)
    self._train_input = (dataset, iterator)
    return iterator

  def _position_restored(self, iterator) -> bool:
    """Sets `iterator` to the input position of the restored checkpoint. False if it was
    damaged (the pipeline restarts, with a warning); raises if the dataset differs.

    On one device the iterator is a `tf.data.Iterator`, whose state (shuffle
    buffers and seeds, positions) tf.train.Checkpoint saves. Distributed
    iterators are not checkpointable (TF 2.21): with several replicas a
    resumed run restarts the pipeline from its beginning.
    """
    if self.restored is None:
      return True
    try:
      if _ITERATOR_KEY not in tf.train.load_checkpoint(self.restored).get_variable_to_shape_map():
        logging.info("%s holds no input position: the input pipeline starts from its "
                     "beginning.", self.restored)
        return True
      tf.train.Checkpoint(train_iterator=iterator).restore(self.restored).expect_partial()
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError, IndexError) as error:
      logging.warning("The input position in %s is damaged (%s): the input pipeline starts "
                      "from its beginning.", self.restored, str(error).splitlines()[0])
      return False
    except (tf.errors.OpError, ValueError) as error:
      raise ValueError(
          f"Cannot resume the input pipeline from {self.restored}: the "
          f"training dataset differs from the checkpointed one ({str(error).splitlines()[0]}). "
          "Use the same pipeline, or Config(checkpoint_iterator=False) to restart the data "
          "from its beginning.") from None
    return True

  def save(self, step: int) -> str:
    """Writes a checkpoint of `step` (replacing one of the same step) and returns its path.

    Never writes non-finite weights: a resumed run would only fail again.
    """
    broken = [v.path for v in self._model.trainable_variables
              if not tf.reduce_all(tf.math.is_finite(v.value)).numpy()]
    if broken:
      raise ValueError(f"Not writing a checkpoint at step {step}: these weights are NaN "
                       f"or infinite: {broken}. The previous checkpoint is "
                       f"{self.manager.latest_checkpoint}.")
    for variable, count in zip(self._per_head.values(),
                               self._counters["nonfinite_losses"].numpy()):
      variable.assign(count)
    try:
      return self.manager.save(checkpoint_number=step)
    except (tf.errors.ResourceExhaustedError, tf.errors.UnknownError, OSError) as error:
      for leftover in tf.io.gfile.glob(tf.io.gfile.join(self.own_dir, f"ckpt-{step}_temp*")):
        tf.io.gfile.rmtree(leftover)
      raise ValueError(
          f"Cannot write the checkpoint of step {step} into model_dir={self.own_dir} "
          f"({str(error).splitlines()[0]}): is the disk full? The earlier checkpoints are "
          f"intact (newest: {self.manager.latest_checkpoint}).") from None

  def save_if_new(self, step: int):
    """Saves a checkpoint at `step` unless one exists for it (or step is 0)."""
    latest = self.manager.latest_checkpoint
    if step == 0 or (latest is not None and latest.endswith(f"-{step}")):
      return
    self.save(step)


def check_writable(model_dir: str):
  """Fails at construction, not at the first summary or checkpoint, if model_dir is unusable."""
  try:
    tf.io.gfile.makedirs(model_dir)
    # Per process: workers of one job share model_dir.
    probe = tf.io.gfile.join(model_dir, f".write-test-{socket.gethostname()}-{os.getpid()}")
    with tf.io.gfile.GFile(probe, "w") as handle:
      handle.write("ok")
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as error:
    raise ValueError(f"model_dir {model_dir!r} is not a writable directory: "
                     f"{str(error).splitlines()[0]}") from None
