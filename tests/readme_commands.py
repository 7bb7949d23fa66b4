"""Runs every command of README.md's `sh` blocks, and its Python snippet, as written.

    python tests/readme_commands.py WORK_DIR    # prints a JSON list of outcomes

Run by tests/test_readme.py in the background (an early run), not by pytest.
WORK_DIR plays a fresh clone: `scripts` and `.venv` link to this checkout's,
so each command runs as written, relative paths and all. Training commands
other than the demo's (`runs/demo`, which the later commands read) get a
few steps (`FEW_STEPS` appended; and `--nohead_diagnostics`, a second
program to trace, unless the command sets `--aggregation`, whose test reads
the diagnostics: it gets them at its last step, `--diagnostics_every=20`); `make` and the TensorBoard server are not
run (`SKIPPED`): `make test` is this suite and `make demo` is the demo's
command. The demo starts a fresh interpreter, as `make demo` does; the other
`.venv/bin/python` commands and the snippet run in forks of a warm one
(tests/warm_python.py), saving the 6.5 s of CPU each spends importing
TensorFlow; the rest run in bash.
"""

import json
import os
import re
import shlex
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEW_STEPS = ["--train_steps=20", "--steps_per_loop=10", "--eval_steps=2", "--nojit_compile"]
SKIPPED = ("make ", ".venv/bin/tensorboard ")


def blocks(kind: str) -> list:
  """The texts of README.md's fenced blocks of this kind."""
  with open(os.path.join(_ROOT, "README.md"), encoding="utf-8") as file:
    text = file.read()
  return re.findall(rf"^```{kind}\n(.*?)^```", text, re.S | re.M)


def commands() -> list:
  """Each shell command of the `sh` blocks: continuation lines and lines inside quotes
  joined, comments dropped."""
  found, pending = [], ""
  for block in blocks("sh"):
    for line in block.replace("\\\n", " ").splitlines():
      pending = f"{pending}\n{line}" if pending else line
      try:
        words = shlex.split(pending, comments=True)
      except ValueError:  # An open quote: the command goes on on the next line.
        continue
      pending = ""
      if words:
        found.append(shlex.join(words))
  return found


def _is_demo(command: str) -> bool:
  return "scripts/train.py" in command and "--model_dir=runs/demo " in command + " "


def _run(command, work_dir):
  words = shlex.split(command)
  if words[0] == os.path.join(".venv", "bin", "python") and not _is_demo(command):
    from tests import warm_python  # pylint: disable=import-outside-toplevel
    completed = warm_python.run([sys.executable, *words[1:]], cwd=work_dir,
                                capture_output=True, text=True, timeout=600, check=False)
  else:
    completed = subprocess.run(["bash", "-c", command], cwd=work_dir, capture_output=True,
                               text=True, timeout=600, check=False)
  return {"command": command, "returncode": completed.returncode,
          "stdout": completed.stdout, "stderr": completed.stderr,
          "output": (completed.stdout + completed.stderr)[-3000:]}


def run_all(work_dir: str) -> list:
  os.makedirs(work_dir, exist_ok=True)
  os.symlink(os.path.join(_ROOT, "scripts"), os.path.join(work_dir, "scripts"))
  os.symlink(sys.prefix, os.path.join(work_dir, ".venv"))
  outcomes = []
  for command in commands():
    if command.startswith(SKIPPED):
      outcomes.append({"command": command, "returncode": None, "output": "skipped"})
      continue
    if "scripts/train.py" in command and not _is_demo(command):
      command = " ".join([command, *FEW_STEPS,
                          *(["--diagnostics_every=20"] if "--aggregation" in command
                            else ["--nohead_diagnostics"])])
    outcomes.append(_run(command, work_dir))
  snippet, = blocks("python")
  outcomes.append(_run(shlex.join([os.path.join(".venv", "bin", "python"), "-c", snippet]),
                       work_dir))
  return outcomes


if __name__ == "__main__":
  sys.path[0] = _ROOT  # For `tests.warm_python`.
  print(json.dumps(run_all(sys.argv[1])))
