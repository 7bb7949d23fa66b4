"""README.md as a new user meets it: every shell command and the research snippet run."""

import json
import os

import pytest

from tests import early_runs
from tests import readme_commands

_README = early_runs.register("readme_run", lambda work_dir: [
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "readme_commands.py"),
    os.path.join(work_dir, "clone")], timeout=1200)


@pytest.fixture(scope="module")
def readme_outcomes():
  _, result = _README.result()
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


def test_only_make_and_the_tensorboard_server_are_left_out(readme_outcomes):
  skipped = [o["command"] for o in readme_outcomes if o["returncode"] is None]
  assert skipped == ["make demo", "make test", ".venv/bin/tensorboard --logdir runs/demo"]
  assert len(readme_outcomes) == len(readme_commands.commands()) + 1  # And the snippet.


def test_every_readme_command_and_the_research_snippet_succeed(readme_outcomes):
  failed = [o for o in readme_outcomes if o["returncode"] not in (0, None)]
  assert not failed, "\n\n".join(f"$ {o['command']}\n{o['output']}" for o in failed)


def test_readme_commands_are_parsed_whole():
  commands = readme_commands.commands()
  assert any(c.startswith(".venv/bin/python scripts/train.py --model_dir=runs/sequences "
                          "--experiment=sequences") and "large_vocab=True" in c
             for c in commands)
  assert all(not c.endswith("\\") for c in commands)
