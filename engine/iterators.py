"""Finished tf.data iterators are destroyed on a background thread, not the caller's.

In TensorFlow 2.21, destroying an iterator waits for its autotuning thread
(tf.data's `Model::OptimizeLoop`) to leave its timed wait, whose period
grows towards a minute while the iterator lives. The thread that drops the
last reference blocks for that long: measured 0-5 s at the end of an
evaluation in the scripts, up to 60 s for a training iterator (gdb: the
main thread in `~RootDataset::Iterator`). Every evaluation makes and drops
an iterator, so a run that evaluates often would stall at random; handed
to the thread here, the wait costs nobody anything.
"""

import concurrent.futures

# One worker thread. An executor's threads are joined at exit after their queued work,
# before the interpreter finalizes: a daemon thread still destroying an iterator then
# would be unwound out of TensorFlow's C++ and abort the process ("FATAL: exception not
# rethrown", exit code -6; seen once in the suite).
_RELEASER = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                  thread_name_prefix="iterator-release")


def release(holder: list) -> None:
  """Destroys the iterators in `holder`, off the caller's thread, and empties it there.

  The list must hold the only references: the caller then never has the
  last one, so it cannot be the thread that waits (a list, not the iterator
  itself, so that no local name of the caller's outlives the hand-over).
  At exit, the process waits for the destructions still queued, as it
  would for the iterators it destroys itself.
  """
  _RELEASER.submit(holder.clear)
