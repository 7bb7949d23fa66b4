"""Checkpoints of a Trainer: what they hold, where they go, and restoring them.

A checkpoint holds the trunk, each head by name (with its weighting's
state), the optimizer, the global step and the step counters, the training
input's position on one device, and, by position, model variables that
tf.train.Checkpoint would not reach. Every worker of a multi-worker job
takes part in a save (it is collective), but only the chief writes into
`model_dir`; the others write into `model_dir/.worker-N`. All restore from
`model_dir`.
"""

import os
import socket

from absl import logging
import tensorflow as tf


class Checkpoints:
  """The Trainer's tf.train.Checkpoint and its managers.

  Args:
    model: the MultiHeadModel.
    optimizer: the optimizer (with its slots, iteration count and loss scale).
    strategy: the tf.distribute strategy (its chief writes into model_dir).
    counters: {name: variable} of step counters to save; "global_step" numbers
      the checkpoints.
    model_dir: where checkpoints are read from (and written, on the chief).
    max_to_keep: checkpoints kept.
  """

  def __init__(self, *, model, optimizer, strategy, counters: dict, model_dir: str,
               max_to_keep: int):
    step_counter = counters["global_step"]
    # Where this process writes: model_dir on the chief, a directory of its own elsewhere.
    self.own_dir = own_dir = model_dir if strategy.extended.should_checkpoint else (
        tf.io.gfile.join(model_dir, f".worker-{strategy.cluster_resolver.task_id}"))
    # Keras 3 models hide list and dict attributes from tf.train.Checkpoint,
    # so the checkpoint names the trunk and each head itself.
    self.checkpoint = tf.train.Checkpoint(
        trunk=model.trunk, heads={head.name: head for head in model.head_list},
        optimizer=optimizer, **counters)
    self._model = model
    self._model_dir = model_dir
    self._train_input = None  # (dataset, iterator) of the last `train_iterator` call.
    self._step_counter = step_counter
    self.manager = tf.train.CheckpointManager(self.checkpoint, own_dir, max_to_keep=max_to_keep,
                                              step_counter=step_counter)
    self._read_manager = self.manager if own_dir == model_dir else tf.train.CheckpointManager(
        self.checkpoint, model_dir, max_to_keep=max_to_keep)

  @property
  def latest(self):
    """Path of the newest checkpoint in model_dir, or None."""
    return self._read_manager.latest_checkpoint

  def track_hidden_variables(self):
    """Adds to the checkpoint, by position, model variables it would not reach.

    Keras 3 hides from tf.train.Checkpoint the variables of objects held in
    list or dict attributes of a custom layer, and the state of every
    `keras.random.SeedGenerator` (e.g. Dropout's): a resumed run would lose
    them silently. They are saved as the list `model_state`, in the model's
    variable order, so the same architecture restores them.
    """
    reachable = {id(obj) for obj in tf.train.TrackableView(self.checkpoint).descendants()}
    hidden = [variable for variable in self._model.variables if id(variable) not in reachable]
    if hidden:
      logging.info("Checkpointing by position the variables tf.train.Checkpoint would not "
                   "reach: %s", [variable.path for variable in hidden])
      self.checkpoint.model_state = hidden

  def restore_latest_readable(self):
    """Restores the newest checkpoint that can be read, warning about damaged newer ones.

    A truncated or missing file (a crash while saving, a full disk) makes
    TensorFlow raise a data-loss or not-found error: the next older
    checkpoint is tried. A checkpoint of another model is not damage: it
    stops with an error saying so.
    """
    for path in reversed(self._read_manager.checkpoints):
      try:
        # Partial: the input position is restored when the iterator is attached.
        self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
      except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
              IndexError) as error:  # A truncated data file: "Read less bytes than requested".
        logging.warning("Checkpoint %s is damaged and was skipped (%s): %s", path,
                        type(error).__name__, str(error).splitlines()[0])
        continue
      except (ValueError, AssertionError) as error:
        raise ValueError(
            f"Cannot restore the checkpoint {path} into this model: {error} "
            "Was it written for other heads or shapes? Use a new model_dir, or "
            "the same trunk and heads.") from None
      logging.info("Restored %s at step %d.", path, int(self._step_counter.numpy()))
      return
    if self._read_manager.checkpoints:
      logging.warning("No readable checkpoint in %s: starting from scratch.", self._model_dir)

  def restore(self, path: str):
    """Restores one given checkpoint (e.g. to evaluate it)."""
    try:
      self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
    except (tf.errors.OpError, IndexError) as error:
      raise ValueError(f"Cannot read the checkpoint {path}: "
                       f"{str(error).splitlines()[0]}") from None
    except (ValueError, AssertionError) as error:
      raise ValueError(f"Cannot restore the checkpoint {path} into this model: "
                       f"{error} Was it written for other heads or shapes?") from None

  def train_iterator(self, dataset, strategy, attach: bool):
    """The iterator of the last call if `dataset` is the same object (it goes on where
    it stopped), else a new one, positioned from the latest checkpoint if `attach`."""
    if self._train_input is not None and self._train_input[0] is dataset:
      return self._train_input[1]
    # One replica: a plain tf.data iterator, which checkpoints its position.
    iterator = iter(dataset if strategy.num_replicas_in_sync == 1
                    else strategy.experimental_distribute_dataset(dataset))
    if attach:
      self.attach_iterator(iterator)
    self._train_input = (dataset, iterator)
    return iterator

  def attach_iterator(self, iterator):
    """Puts the input pipeline's position in the checkpoint, and restores it on resume.

    On one device the iterator is a `tf.data.Iterator`, whose state (shuffle
    buffers and seeds, positions) tf.train.Checkpoint saves. Attaching it
    restores the state the latest checkpoint holds (deferred restoration).
    Distributed iterators are not checkpointable (TF 2.21): with several
    replicas a resumed run restarts the pipeline from its beginning.
    """
    if not isinstance(iterator, tf.data.Iterator):
      return
    try:
      self.checkpoint.train_iterator = iterator
    except (tf.errors.OpError, ValueError) as error:
      raise ValueError(
          f"Cannot resume the input pipeline from {self.latest}: the "
          f"training dataset differs from the checkpointed one ({str(error).splitlines()[0]}). "
          "Use the same pipeline, or Config(checkpoint_iterator=False) to restart the data "
          "from its beginning.") from None

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
    return self.manager.save(checkpoint_number=step)

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
