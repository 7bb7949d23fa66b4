"""Runs scripts' `main` on several bad command lines in one process.

    python tests/script_errors.py '[["train.py", "--model_dir=/tmp/x", "--batch_size=-4"], ...]'

Run by the flag-error tests, not by pytest: starting Python and TensorFlow
costs about 3 s per process, so the cases share one. Each case parses its
flags afresh, as `app.run` does, and runs `main` (scripts whose flags
share names, like train.py's and evaluate.py's --train_steps, need separate
processes). Prints a JSON list with,
per case, the error a user would see ("ErrorType: message"), or null if
`main` returned.
"""

import importlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # pylint: disable=g-import-not-at-top

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cases(cases):
  sys.path[:0] = [os.path.join(_ROOT, "scripts"), _ROOT]
  messages = []
  for script, *argv in cases:
    module = importlib.import_module(script.removesuffix(".py"))
    flags.FLAGS.unparse_flags()
    try:
      module.main(flags.FLAGS([script, *argv]))
      messages.append(None)
    except Exception as error:  # pylint: disable=broad-except
      messages.append(f"{type(error).__name__}: {error}")
  return messages


def in_one_process(cases):
  """Each case's error message (or None), from one fresh process: for tests."""
  from tests import warm_python  # pylint: disable=import-outside-toplevel
  result = warm_python.run([sys.executable, os.path.abspath(__file__), json.dumps(cases)],
                           capture_output=True, text=True, timeout=300, cwd=_ROOT, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


if __name__ == "__main__":
  print(json.dumps(run_cases(json.loads(sys.argv[1]))))
