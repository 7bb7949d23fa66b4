"""Script runs started in the background as soon as the tests are collected.

The end-to-end tests run the scripts in subprocesses, and most of a run's
time is single-threaded (Python and TensorFlow start-up, XLA compilation).
Started one after the other in a background thread, they use the machine's
second core while the in-process tests run; the fixture that needs a run
then waits only for what is left of it, or runs it itself if the
background has not reached it yet. Only runs whose fixture a collected test
uses are started.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import threading

from tests import warm_python

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUNS = []


class EarlyRun:
  """One script run: `argv(model_dir)` gives its arguments after the interpreter."""

  def __init__(self, fixture, argv, timeout, env=None):
    self.fixture = fixture
    self._argv = argv
    self._env = env
    self._timeout = timeout
    self._lock = threading.Lock()
    self._claimed = False
    self._done = threading.Event()
    self._outcome = None
    self._process = None

  def result(self):
    """(model_dir, subprocess.CompletedProcess) of the finished run."""
    if self._claim():
      self._run()
    self._done.wait()
    if isinstance(self._outcome, BaseException):
      raise self._outcome
    return self._outcome

  def _claim(self) -> bool:
    with self._lock:
      claimed, self._claimed = self._claimed, True
      return not claimed

  def _run(self):
    try:
      model_dir = tempfile.mkdtemp(prefix=f"early-{self.fixture}-")
      command = [sys.executable, *self._argv(model_dir)]
      # Files, not pipes: a chatty run would block on a full pipe.
      with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        environment = None if self._env is None else {**os.environ, **self._env(model_dir)}
        self._process = warm_python.Popen(command, stdout=out, stderr=err, cwd=_ROOT,
                                          env=environment)
        code = self._process.wait(timeout=self._timeout)
        out.seek(0)
        err.seek(0)
        self._outcome = (model_dir, subprocess.CompletedProcess(command, code, out.read(),
                                                                err.read()))
    except BaseException as error:  # pylint: disable=broad-except
      if self._process is not None and self._process.poll() is None:
        self._process.kill()
      self._outcome = error  # Raised in the test that needs the run.
    finally:
      self._done.set()


def register(fixture, argv, timeout=600, env=None) -> EarlyRun:
  """Declares a run for the fixture named `fixture` (call at module level); `env(model_dir)`
  gives environment variables to add."""
  run = EarlyRun(fixture, argv, timeout, env)
  _RUNS.append(run)
  return run


def start(fixture_names):
  """Starts, one at a time in a background thread, the runs these fixtures need.

  Not under pytest-xdist: a worker does not know which tests it will get, and
  the other worker keeps the second core busy; each run then starts when its
  fixture is first needed.
  """
  if os.environ.get("PYTEST_XDIST_WORKER"):
    return
  needed = [run for run in _RUNS if run.fixture in fixture_names]

  def work():
    for run in needed:
      if run._claim():  # pylint: disable=protected-access
        run._run()  # pylint: disable=protected-access

  if needed:
    threading.Thread(target=work, name="early-runs", daemon=True).start()


def cleanup():
  """Stops runs still going (a test run stopped early) and removes their directories."""
  for run in _RUNS:
    process = run._process  # pylint: disable=protected-access
    if process is not None and process.poll() is None:
      process.kill()
    outcome = run._outcome  # pylint: disable=protected-access
    if isinstance(outcome, tuple):
      shutil.rmtree(outcome[0], ignore_errors=True)
