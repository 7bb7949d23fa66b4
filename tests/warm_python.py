"""`subprocess.Popen` whose Python script runs start from forks of a warm interpreter.

Each script run of the suite used to pay for a new interpreter importing
TensorFlow, Keras and the engine: 6.5 s of CPU on a 2-core machine like CI's,
about 50 times. `Popen` here forks those runs, `[sys.executable, SCRIPT, ...]` or
`[sys.executable, "-c", CODE, ...]`, from a server process (one per test
process, started on first use) that imported `engine` and `heads` and did
nothing else: it ran no op, so TensorFlow has no threads or devices yet, and a
fork starts where a fresh interpreter stands after those imports. Every other
command, and any call with `preexec_fn` or `pass_fds`, starts as usual.

A forked run gets its own argv, working directory, environment, standard
streams and `sys.path` (the script's directory, then PYTHONPATH, then the
interpreter's), and fresh random states (Python's and NumPy's reseed after a
fork; the test checks), runs its script as `__main__` and ends
through the interpreter's normal exit, exceptions and `sys.exit` codes
included. Its `pid` is the script's own process, so tests signal it as
before; its exit status comes back over the server's socket from the
process that forked it. Not the same as a fresh interpreter: what TensorFlow
reads from the environment at import (its C++ log level, for one) comes from
the server's environment, which is the test process's; and a script
that used a module it never imported would not fail here. The README's demo
command runs in a fresh interpreter (tests/readme_commands.py), so the main
job is still checked from a cold start.
"""

import atexit
import gc
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

_SERVER_LOCK = threading.Lock()
_SERVER = {}  # "path", "alive" (the pipe end whose closing stops the server), "dir".


def _server_path() -> str:
  """The server's socket, starting the server on first use."""
  with _SERVER_LOCK:
    if not _SERVER:
      directory = tempfile.mkdtemp(prefix="warm-python-")
      path = os.path.join(directory, "socket")
      listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
      listener.bind(path)
      listener.listen(64)  # Connections wait here while the server imports.
      alive_read, alive_write = os.pipe()
      subprocess.Popen(  # pylint: disable=consider-using-with
          [sys.executable, os.path.abspath(__file__), str(listener.fileno()), str(alive_read)],
          pass_fds=(listener.fileno(), alive_read), stdin=subprocess.DEVNULL)
      listener.close()
      os.close(alive_read)
      _SERVER.update(path=path, alive=alive_write, dir=directory)
      atexit.register(stop)  # Where no test session calls it (tests/readme_commands.py).
    return _SERVER["path"]


def stop():
  """Stops the server (it also stops when this process exits) and removes its socket."""
  with _SERVER_LOCK:
    if _SERVER:
      os.close(_SERVER["alive"])
      shutil.rmtree(_SERVER["dir"], ignore_errors=True)
      _SERVER.clear()


def _forkable(args, executable, preexec_fn, pass_fds, shell) -> bool:
  return (isinstance(args, (list, tuple)) and len(args) >= 2 and not shell
          and executable is None and preexec_fn is None and not pass_fds
          and os.fspath(args[0]) == sys.executable
          and (os.fspath(args[1]).endswith(".py") or (args[1] == "-c" and len(args) >= 3)))


class Popen(subprocess.Popen):
  """subprocess.Popen; Python scripts run in a fork of the warm server (module docstring)."""

  _connection = None

  def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env,
                     startupinfo, creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite,
                     errread, errwrite, *rest):  # pylint: disable=arguments-differ
    if not _forkable(args, executable, preexec_fn, pass_fds, shell):
      super()._execute_child(args, executable, preexec_fn, close_fds, pass_fds, cwd, env,
                             startupinfo, creationflags, shell, p2cread, p2cwrite, c2pread,
                             c2pwrite, errread, errwrite, *rest)
      return
    request = {"argv": [os.fspath(arg) for arg in args],
               "cwd": os.path.abspath(os.fspath(cwd) if cwd is not None else os.getcwd()),
               "env": dict(os.environ if env is None else env)}
    streams = [p2cread, c2pwrite, errwrite]
    streams = [fd if fd != -1 else default for fd, default in zip(streams, (0, 1, 2))]
    self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    self._received = b""
    try:
      path = _server_path()
      try:
        self._connection.connect(path)
      except OSError as error:
        raise RuntimeError(f"the warm Python server at {path} does not answer ({error}); "
                           "it writes its errors to this process's stderr") from error
      socket.send_fds(self._connection, [json.dumps(request).encode() + b"\n"], streams)
      self.pid = int(self._line(block=True))
      self._child_created = True
    finally:  # The run has its copies of the child's ends now, as after a fork and exec.
      self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

  def _line(self, block):
    """The server's next line, or None if it has not come and `block` is false."""
    while b"\n" not in self._received:
      if not block and not select.select([self._connection], [], [], 0)[0]:
        return None
      chunk = self._connection.recv(64)
      if not chunk:
        raise ChildProcessError(f"the warm Python server lost the run of {self.args}")
      self._received += chunk
    line, self._received = self._received.split(b"\n", 1)
    return line

  def _try_wait(self, wait_flags):
    if self._connection is None:
      return super()._try_wait(wait_flags)
    line = self._line(block=not wait_flags & os.WNOHANG)
    if line is None:
      return 0, 0
    self._connection.close()
    return self.pid, int(line)

  def _internal_poll(self, _deadstate=None, **unused):  # pylint: disable=arguments-differ
    if self._connection is None:
      return super()._internal_poll(_deadstate)
    if self.returncode is None and self._waitpid_lock.acquire(False):
      try:
        if self.returncode is None:
          pid, status = self._try_wait(os.WNOHANG)
          if pid == self.pid:
            self._handle_exitstatus(status)
      except OSError:
        if _deadstate is not None:
          self.returncode = _deadstate
      finally:
        self._waitpid_lock.release()
    return self.returncode


def run(args, *, timeout=None, check=False, capture_output=False, **kwargs):
  """subprocess.run with this module's Popen."""
  if capture_output:
    kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
  with Popen(args, **kwargs) as process:
    try:
      stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
      process.kill()
      raise
  completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
  if check:
    completed.check_returncode()
  return completed


# The server: `python tests/warm_python.py LISTENER_FD ALIVE_FD` (started by _server_path).

def _serve(listener_fd, alive_fd):
  """Accepts runs until the client's pipe closes; returns only in a run's process."""
  import engine  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
  import heads  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
  gc.freeze()  # Runs neither scan the imports' objects nor copy their pages to do so.
  listener = socket.socket(fileno=listener_fd)
  signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # Supervisors are reaped by the kernel.
  while True:
    ready, _, _ = select.select([listener, alive_fd], [], [])
    if alive_fd in ready:
      os._exit(0)  # pylint: disable=protected-access
    connection, _ = listener.accept()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() == 0:
      listener.close()
      os.close(alive_fd)
      return _supervise(connection)
    connection.close()


def _supervise(connection):
  """Forks the run and reports its pid and wait status; returns only in the run."""
  message, streams, _, _ = socket.recv_fds(connection, 1 << 16, 3)
  while not message.endswith(b"\n"):
    message += connection.recv(1 << 16)
  signal.signal(signal.SIGCHLD, signal.SIG_DFL)
  pid = os.fork()
  if pid == 0:
    connection.close()
    for target, fd in enumerate(streams):
      os.dup2(fd, target)
    for fd in streams:
      os.close(fd)
    return json.loads(message)
  for fd in streams:
    os.close(fd)
  connection.sendall(b"%d\n" % pid)
  _, status = os.waitpid(pid, 0)
  connection.sendall(b"%d\n" % status)
  os._exit(0)  # pylint: disable=protected-access


def _run(request, base_path):
  """Runs the request's script as `python ARGV...` would, after the imports."""
  import runpy  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  os.chdir(request["cwd"])
  os.environ.clear()
  os.environ.update(request["env"])
  python_path = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
  _, first, *rest = request["argv"]
  if first == "-c":
    code, *rest = rest
    sys.argv = ["-c", *rest]
    sys.path[:] = ["", *python_path, *base_path]
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    exec(compile(code, "<string>", "exec"), main.__dict__)  # pylint: disable=exec-used
  else:
    sys.argv = [first, *rest]
    sys.path[:] = [os.path.dirname(os.path.realpath(first)), *python_path, *base_path]
    runpy.run_path(first, run_name="__main__")


if __name__ == "__main__":
  _OWN_PYTHON_PATH = set(os.environ.get("PYTHONPATH", "").split(os.pathsep))
  _BASE_PATH = [entry for entry in sys.path[1:] if entry not in _OWN_PYTHON_PATH]
  _run(_serve(int(sys.argv[1]), int(sys.argv[2])), _BASE_PATH)
