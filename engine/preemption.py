"""Stopping a run cleanly when the scheduler says so (SIGTERM), on one host or a cluster.

On one host, a SIGTERM handler sets a flag that `train` checks between
loops: the loop in flight finishes, a checkpoint is saved and `Preempted`
(exit code 42) is raised. Multi-worker and TPU jobs hand SIGTERM to
`tf.distribute.experimental.PreemptionCheckpointHandler`, which makes every
worker save the same step through the cluster's coordination service.
"""

import contextlib
import signal
import threading

from absl import logging
import tensorflow as tf

EXIT_CODE = 42  # As tf.distribute's PreemptionCheckpointHandler exits.


class Preempted(SystemExit):
  """Raised by `train` after SIGTERM, once the current step is checkpointed.

  A SystemExit: uncaught, the process exits with code 42 and no traceback,
  and the scheduler's restart resumes from the checkpoint.
  """

  def __init__(self, step):
    super().__init__(EXIT_CODE)
    self.step = step


def cluster_handler(strategy, manager):
  """The PreemptionCheckpointHandler for multi-worker and TPU jobs, else None."""
  if not isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                               tf.distribute.TPUStrategy)):
    return None
  return tf.distribute.experimental.PreemptionCheckpointHandler(strategy.cluster_resolver,
                                                                manager)


@contextlib.contextmanager
def sigterm_flag(enabled: bool = True):
  """A list that becomes truthy when SIGTERM arrives, while the context lasts.

  Signal handlers can only be set from the main thread; elsewhere (or when
  not `enabled`, e.g. a cluster handler owns SIGTERM) the flag is inert.
  """
  flag = []
  if not enabled or threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.append(signum))
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def exit_if_preempted(handler, sigterm, checkpoints, step: int):
  """Between loops: saves and exits if the scheduler asked (`Preempted`, exit code 42).

  With a cluster `handler`, every worker saves the same step and exits
  inside it; otherwise `sigterm` (the flag of `sigterm_flag`) decides.
  """
  if handler is not None:
    handler.save_checkpoint_if_preempted(checkpoint_number=step)
  if sigterm:
    checkpoints.save_if_new(step)
    logging.warning("SIGTERM: saved a checkpoint at step %d; exiting with code %d.", step,
                    EXIT_CODE)
    raise Preempted(step)
