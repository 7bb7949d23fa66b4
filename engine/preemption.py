"""Stopping a run cleanly when the scheduler (SIGTERM) or the user (Ctrl-C, SIGINT) says so.

On one host, a handler sets a flag that `train` checks between loops and
once more after the last one: the loop in flight finishes, a checkpoint is
saved, and `Preempted` (exit code 42) or `Interrupted` (130, as a shell
reports Ctrl-C) is raised. A second Ctrl-C stops at once (KeyboardInterrupt),
for a user who does not want to wait for the loop. Multi-worker and TPU jobs
hand SIGTERM to `tf.distribute.experimental.PreemptionCheckpointHandler`,
which makes every worker save the same step through the cluster's
coordination service.
"""

import contextlib
import signal
import threading

from absl import logging
import tensorflow as tf

EXIT_CODE = 42  # As tf.distribute's PreemptionCheckpointHandler exits.
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT.


class Preempted(SystemExit):
  """Raised by `train` after SIGTERM, once the current step is checkpointed.

  A SystemExit: uncaught, the process exits with code 42 and no traceback,
  and the scheduler's restart resumes from the checkpoint.
  """

  def __init__(self, step, code=EXIT_CODE):
    super().__init__(code)
    self.step = step


class Interrupted(Preempted):
  """Raised by `train` after Ctrl-C (SIGINT), once the current step is checkpointed (exit 130)."""

  def __init__(self, step):
    super().__init__(step, INTERRUPTED_EXIT_CODE)


def cluster_handler(strategy, manager):
  """The PreemptionCheckpointHandler for multi-worker and TPU jobs, else None."""
  if not isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                               tf.distribute.TPUStrategy)):
    return None
  return tf.distribute.experimental.PreemptionCheckpointHandler(strategy.cluster_resolver,
                                                                manager)


@contextlib.contextmanager
def stop_flag(sigterm: bool = True):
  """A list that receives SIGINT (and SIGTERM, if `sigterm`) while the context lasts.

  Signal handlers can only be set from the main thread; elsewhere the flag
  is inert.
  """
  flag = []
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return

  def on_signal(signum, frame):
    if signum == signal.SIGINT and signal.SIGINT in flag:
      raise KeyboardInterrupt  # The second Ctrl-C: stop now.
    flag.append(signum)
    if signum == signal.SIGINT:
      logging.warning("Ctrl-C: saving a checkpoint after this loop (press again to stop now).")
  signals = [signal.SIGINT] + ([signal.SIGTERM] if sigterm else [])
  previous = {signum: signal.signal(signum, on_signal) for signum in signals}
  try:
    yield flag
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def exit_if_stopped(handler, flag, checkpoints, step: int):
  """Between loops: saves and exits if the scheduler or the user asked.

  With a cluster `handler`, every worker saves the same step and exits
  inside it on SIGTERM; otherwise `flag` (of `stop_flag`) decides.
  """
  if handler is not None:
    handler.save_checkpoint_if_preempted(checkpoint_number=step)
  if flag:
    checkpoints.save_if_new(step)
    error = Interrupted(step) if flag[0] == signal.SIGINT else Preempted(step)
    logging.warning("%s: saved a checkpoint at step %d; exiting with code %d.",
                    signal.Signals(flag[0]).name, step, error.code)
    raise error
