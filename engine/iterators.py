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

import queue
import threading

_RELEASED = queue.SimpleQueue()
_LOCK = threading.Lock()
_THREADS = []


def release(holder: list) -> None:
  """Destroys the iterators in `holder`, off the caller's thread, and empties it there.

  The list must hold the only references: the caller then never has the
  last one, so it cannot be the thread that waits (a list, not the iterator
  itself, so that no local name of the caller's outlives the hand-over).
  """
  with _LOCK:
    if not _THREADS:
      _THREADS.append(threading.Thread(target=_destroy_released, name="iterator-release",
                                       daemon=True))
      _THREADS[0].start()
  _RELEASED.put(holder)


def _destroy_released():
  while True:
    holder = _RELEASED.get()
    holder.clear()  # The last references: each iterator is destroyed here.
    del holder
