"""tests/warm_python.py: a forked script run behaves like `python SCRIPT` in a fresh process."""

import json
import os
import signal
import subprocess
import sys

from tests import warm_python

_REPORT = """
import json, os, sys
import numpy as np
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path": sys.path[:2],
                  "env": os.environ.get("WARM_TEST"), "main": __name__,
                  "random": np.random.random(), "pid": os.getpid(),
                  "fresh": "warm_test_module" not in sys.modules}))
import warm_test_module
sys.exit(int(sys.argv[1]))
"""


def _report(tmp_path, code):
  script = tmp_path / "report.py"
  script.write_text(_REPORT)
  (tmp_path / "lib").mkdir(exist_ok=True)
  (tmp_path / "lib" / "warm_test_module.py").write_text("")
  result = warm_python.run([sys.executable, str(script), str(code), "x"], cwd=tmp_path,
                           env={**os.environ, "WARM_TEST": "set",
                                "PYTHONPATH": str(tmp_path / "lib")},
                           capture_output=True, text=True, timeout=120)
  return result, json.loads(result.stdout)


def test_a_run_gets_its_own_argv_directory_environment_path_and_exit_code(tmp_path):
  first, seen = _report(tmp_path, 3)
  assert first.returncode == 3, first.stderr
  assert seen["argv"] == [str(tmp_path / "report.py"), "3", "x"]
  assert (seen["cwd"], seen["path"], seen["env"], seen["main"]) == (
      str(tmp_path), [str(tmp_path), str(tmp_path / "lib")], "set", "__main__")
  second, again = _report(tmp_path, 0)
  assert second.returncode == 0
  assert again["fresh"] and seen["fresh"]  # The first run's imports are not the second's.
  assert again["random"] != seen["random"] and again["pid"] != seen["pid"]
  assert again["pid"] != os.getpid()


def test_an_exception_and_a_signal_end_the_run_as_they_end_python():
  raised = warm_python.run([sys.executable, "-c", "raise ValueError('bad input')"],
                           capture_output=True, text=True, timeout=120)
  assert raised.returncode == 1
  assert raised.stderr.strip().endswith("ValueError: bad input")
  process = warm_python.Popen([sys.executable, "-c", "import time; print('up', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline() == "up\n"
  process.send_signal(signal.SIGKILL)
  assert process.wait(timeout=30) == -signal.SIGKILL
  process.stdout.close()


def test_other_commands_start_as_usual():
  result = warm_python.run(["sh", "-c", "echo $0"], capture_output=True, text=True)
  assert result.stdout == "sh\n"
