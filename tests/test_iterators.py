"""Finished iterators are destroyed on the release thread, never on the caller's."""

import threading
import time
import weakref

import engine
from engine import iterators
from tests import conftest


def _destroying_thread(objects):
  """The names of the threads that destroyed each of `objects` (waits for them)."""
  names, done, count = [], threading.Event(), len(objects)
  def note():
    names.append(threading.current_thread().name)
    if len(names) == count:
      done.set()
  for item in objects:
    weakref.finalize(item, note)
  return names, done


def test_a_released_iterator_is_destroyed_on_the_release_thread():
  dataset = engine.data.synthetic("eval", 8, num_examples=32)
  holder = [iter(dataset), iter(dataset)]
  next(holder[0])
  names, done = _destroying_thread(holder)
  iterators.release(holder)
  assert done.wait(60.0), names
  assert [name.split("_")[0] for name in names] == ["iterator-release"] * 2
  assert holder == []


def test_evaluate_and_a_new_training_dataset_hand_their_iterators_over(make_trainer,
                                                                       monkeypatch):
  watched = []
  release = iterators.release
  def spy(holder):
    watched.append(_destroying_thread(holder))
    release(holder)
  monkeypatch.setattr(iterators, "release", spy)
  # The suite keeps training iterators alive (conftest.py); this test lets them go.
  monkeypatch.setattr(engine.checkpointing.Checkpoints, "train_iterator",
                      conftest.unkept_train_iterator)
  trainer = make_trainer(jit_compile=False)
  evaluation = engine.data.synthetic("eval", 16, num_examples=32)
  trainer.train(engine.data.synthetic("train", 16, num_examples=64), steps=5)
  trainer.evaluate(evaluation)
  trainer.train(engine.data.synthetic("train", 16, num_examples=64), steps=10)  # New data.
  assert len(watched) == 2  # The evaluation's iterator and the first training one.
  deadline = time.monotonic() + 60
  for names, done in watched:
    assert done.wait(max(0.0, deadline - time.monotonic())), names
    assert [name.split("_")[0] for name in names] == ["iterator-release"]
