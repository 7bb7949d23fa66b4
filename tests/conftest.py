"""Shared test set-up: quiet TensorFlow, parsed absl flags, small trainers."""

import gc
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the whole run: the pytest process that loads
# this first (xdist's controller, or the only one) makes it; workers and the scripts the
# tests start inherit it through the environment. Many tests run the same script with the
# same flags, which compiles the same programs; from the cache they load in milliseconds
# instead of compiling for seconds. Tracing still runs, so trace counts are unchanged,
# and a hit is the same HLO, so results are too. Removed at the end by its maker.
_OWNS_XLA_CACHE = "ENGINE_TESTS_XLA_CACHE" not in os.environ
if _OWNS_XLA_CACHE:
  os.environ["ENGINE_TESTS_XLA_CACHE"] = tempfile.mkdtemp(prefix="engine-tests-xla-")
  os.environ["TF_XLA_FLAGS"] = " ".join(filter(None, [
      os.environ.get("TF_XLA_FLAGS"),
      f"--tf_xla_persistent_cache_directory={os.environ['ENGINE_TESTS_XLA_CACHE']}"]))
# Compiling dominates the suite's XLA runs (a small trainer's train and eval programs: 14
# s of CPU with XLA's defaults, 9-12 s so); LLVM at -O0 without its expensive passes
# compiles them faster and runs them about half as fast, which runs of a few hundred steps
# do not feel. Users' runs keep XLA's defaults; an XLA_FLAGS of the caller's wins.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
if os.environ.get("PYTEST_XDIST_WORKER"):
  # Two workers on two cores: one intra-op thread each (and in the scripts they run),
  # or TensorFlow's spinning thread pools oversubscribe the cores (measured: a third
  # more wall time for the same tests).
  os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import tensorflow as tf  # pylint: disable=g-import-not-at-top

# Two logical CPU devices, so distribution can be tested on this machine. This
# must run before TensorFlow initialises its devices, i.e. before any op.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from absl import flags  # pylint: disable=g-import-not-at-top,g-bad-import-order
import keras  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

import engine  # pylint: disable=g-import-not-at-top
import heads  # pylint: disable=g-import-not-at-top
from tests import early_runs  # pylint: disable=g-import-not-at-top
from tests import warm_python  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()

# The imports' objects (TensorFlow's, Keras's: most of the heap) leave the garbage
# collector's generations: every full collection scanned them again (test_trainer and
# test_validation: 6.0 -> 4.6 s of collection).
gc.freeze()

# Every training iterator stays alive until the process exits (`os._exit` below, so none
# is ever destroyed). Destroying a tf.data iterator in TensorFlow 2.21 blocks the
# destroying thread until the iterator's autotuning thread wakes from its timed wait,
# which grows to a minute (gdb: the main thread in ~LogicalThreadWrapper under
# ~RootDataset::Iterator, the model thread in Model::OptimizeLoop's wait). Garbage
# collection did that at random points of later tests: 15 mirrored trainers made and
# dropped in a loop took 211 s for 87 s of CPU, 85 s with their iterators kept; one
# device, 25 trainers: 71 s for 57 s. An iterator costs far less memory than its trainer.
_TRAIN_ITERATORS = []
unkept_train_iterator = engine.checkpointing.Checkpoints.train_iterator


def _train_iterator_kept(self, *args, **kwargs):
  iterator = unkept_train_iterator(self, *args, **kwargs)
  _TRAIN_ITERATORS.append(iterator)
  return iterator


engine.checkpointing.Checkpoints.train_iterator = _train_iterator_kept


def small_trunk(width=16):
  return keras.Sequential([keras.layers.Dense(width, activation="relu")])


@pytest.fixture
def make_trainer(tmp_path):
  """Factory of small demo-head trainers writing under a fresh tmp_path."""
  def make(model_dir=None, trunk=None, head_list=None, optimizer=None, **config):
    config.setdefault("steps_per_loop", 5)
    config.setdefault("seed", 0)
    # Off unless a test is about them: the diagnostic step is a second XLA
    # program, and compiling dominates these short runs.
    config.setdefault("head_diagnostics", False)
    # XLA compilation dominates these short runs; the tests about XLA ask for
    # it (and the head conformance, distribution, precision and script tests
    # run under it).
    config.setdefault("jit_compile", False)
    # Drawing an evaluation's figures costs more than the evaluation of these small
    # models; the picture and summary tests ask for them.
    config.setdefault("eval_pictures", False)
    return engine.Trainer(
        trunk=trunk or small_trunk(),
        heads=head_list or heads.parse_heads(engine.data.DEMO_HEADS),
        optimizer=optimizer or keras.optimizers.Adam(1e-3),
        config=engine.Config(model_dir=str(model_dir or tmp_path / "model"), **config))
  return make


@pytest.fixture
def demo_batches():
  """A small repeated synthetic training set and a finite eval set."""
  return (engine.data.synthetic("train", 32, num_examples=256),
          engine.data.synthetic("eval", 64, num_examples=256))


def dataset_of(features, labels, weights=None, batch_size=16, repeat=True, static=False):
  """`static`: batches of a static shape (drop_remainder), as several steps per program need."""
  elements = (features, labels) if weights is None else (features, labels, weights)
  dataset = tf.data.Dataset.from_tensor_slices(elements).batch(batch_size, drop_remainder=static)
  return dataset.repeat() if repeat else dataset


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory):
  """A demo-head trainer trained briefly and evaluated once, shared by the
  export, picture and evaluation tests: (trainer, eval dataset)."""
  model_dir = str(tmp_path_factory.mktemp("trained_demo"))
  trainer = engine.Trainer(
      trunk=small_trunk(32), heads=heads.parse_heads(engine.data.DEMO_HEADS),
      optimizer=keras.optimizers.Adam(1e-2),
      config=engine.Config(model_dir=model_dir, steps_per_loop=50, seed=0,
                           head_diagnostics=False, jit_compile=False))
  eval_data = engine.data.synthetic("eval", 64, num_examples=512)
  trainer.train(engine.data.synthetic("train", 64, num_examples=2048), steps=200,
                eval_dataset=eval_data)
  return trainer, eval_data


_EXIT_STATUS = []


# The modules that take longest on one worker (measured on 2 cores), longest first.
# pytest-xdist (--dist loadfile) hands modules out in collection order as workers
# free up, so starting the long ones first keeps both workers busy to the end,
# instead of one worker finishing the README run alone while the other idles.
_LONGEST_FIRST = ("test_readme.py", "test_distribution.py", "test_precision.py",
                  "test_faults.py", "test_resume.py", "test_validation.py",
                  "test_serving_scripts.py", "test_train_script.py", "test_multi_worker.py",
                  "test_weighting.py", "test_experiments.py", "test_benchmark.py")


def _module_rank(item):
  name = os.path.basename(str(item.fspath))
  return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
  """Orders the modules longest first; starts the background script runs the tests need."""
  del config
  items.sort(key=_module_rank)  # Stable: each module's tests keep their order.
  early_runs.start({name for item in items for name in getattr(item, "fixturenames", ())})


def pytest_sessionfinish(session, exitstatus):
  del session
  early_runs.cleanup()
  warm_python.stop()
  if _OWNS_XLA_CACHE:
    shutil.rmtree(os.environ["ENGINE_TESTS_XLA_CACHE"], ignore_errors=True)
  _EXIT_STATUS.append(int(exitstatus))


def pytest_unconfigure(config):
  """Exits at once, with pytest's status, after everything is reported.

  After a few hundred trainers in one process, TensorFlow's runtime threads
  once kept the interpreter from exiting (seen once in this suite, after the
  last report); CI would then wait for its time limit.
  """
  if _EXIT_STATUS:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
      reporter._tw.flush()  # pylint: disable=protected-access
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
      stream.flush()
    os._exit(_EXIT_STATUS[0])  # pylint: disable=protected-access
