"""README.md as a new user meets it: every shell command and the research snippet run."""

import json
import os
import re
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

import engine
from tests import early_runs
from tests import events
from tests import readme_commands
from tests import warm_python

_DEMO = ".venv/bin/python scripts/train.py --model_dir=runs/demo"
_PROGRESS = re.compile(
    r"train \| step (\d+)/(\d+) \| loss [\d.]+ \| digit [\d.]+ parity [\d.]+ box [\d.]+ \| "
    r"[\d.]+ steps/s \| eta (\d+:\d\d:\d\d|-:--:--)")

_README = early_runs.register("readme_run", lambda work_dir: [
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "readme_commands.py"),
    os.path.join(work_dir, "clone")], timeout=1200)


@pytest.fixture(scope="module")
def readme_outcomes():
  work_dir, result = _README.result()
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1]), os.path.join(work_dir, "clone", "runs")


def test_only_make_and_the_tensorboard_server_are_left_out(readme_outcomes):
  readme_outcomes, _ = readme_outcomes
  skipped = [o["command"] for o in readme_outcomes if o["returncode"] is None]
  assert skipped == ["make demo", "make test", ".venv/bin/tensorboard --logdir runs/demo"]
  assert len(readme_outcomes) == len(readme_commands.commands()) + 1  # And the snippet.


def test_every_readme_command_and_the_research_snippet_succeed(readme_outcomes):
  readme_outcomes, _ = readme_outcomes
  failed = [o for o in readme_outcomes if o["returncode"] not in (0, None)]
  assert not failed, "\n\n".join(f"$ {o['command']}\n{o['output']}" for o in failed)


def test_readme_commands_are_parsed_whole():
  commands = readme_commands.commands()
  assert any(c.startswith(".venv/bin/python scripts/train.py --model_dir=runs/sequences "
                          "--experiment=sequences") and "large_vocab=True" in c
             for c in commands)
  assert all(not c.endswith("\\") for c in commands)


@pytest.fixture(scope="module")
def demo_run(readme_outcomes):
  """The demo exactly as `make demo` runs it (the README's first training command)."""
  outcomes, runs = readme_outcomes
  demo, = [o for o in outcomes if o["command"] == _DEMO]
  assert demo["returncode"] == 0, demo["output"]
  return os.path.join(runs, "demo"), demo


def test_the_demo_beats_chance_on_every_head(demo_run):
  model_dir, result = demo_run
  metrics = events.final_scalars(model_dir)
  _, labels = engine.data.synthetic_arrays("eval", 4096)
  majority_digit = np.bincount(labels["digit"]).max() / 4096  # Best constant guess, ~0.13.
  box_variance = np.mean(np.var(labels["box"], axis=0))  # MSE of the best constant, ~0.2.
  assert metrics["digit/accuracy"] >= majority_digit + 0.6
  assert metrics["parity/accuracy"] >= 0.85  # Chance: 0.5.
  assert metrics["box/loss"] <= 0.5 * box_variance
  table = result["stdout"].splitlines()
  assert table[0].split() == ["head", "metric", "value"]
  assert any(row.split()[:2] == ["digit", "accuracy"] for row in table)


def test_the_demo_logs_one_progress_line_per_loop(demo_run):
  _, result = demo_run
  steps = [int(match.group(1)) for match in _PROGRESS.finditer(result["stderr"])]
  assert steps == list(range(100, 3001, 100))


def test_rerunning_the_demo_resumes_instead_of_starting_again(demo_run):
  model_dir, _ = demo_run
  result = warm_python.run([sys.executable, os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "scripts", "train.py"), f"--model_dir={model_dir}"],
                           capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r"Restored .*ckpt-3000 at step 3000", result.stderr)
  assert not _PROGRESS.search(result.stderr)  # Resuming after a stop: the SIGTERM test.


def test_the_pcgrad_and_uncertainty_command_reaches_tensorboard(readme_outcomes):
  _, runs = readme_outcomes
  accumulator = event_accumulator.EventAccumulator(os.path.join(runs, "uncertainty", "train"),
                                                   size_guidance={"tensors": 0})
  accumulator.Reload()
  tags = set(accumulator.Tags()["tensors"])
  assert {"box/log_variance", "digit/loss_weight", "box/trunk_gradient_norm",
          "gradient_cosine/digit_vs_parity"} <= tags
  kept = engine.run_config.read(os.path.join(runs, "uncertainty"))
  assert kept["aggregation"] == "pcgrad"
  assert engine.config.experiment_param_values(kept["experiment_params"])["weighting"] == (
      "uncertainty")


def test_the_mirrored_command_trains_two_replicas_with_its_settings(readme_outcomes):
  outcomes, runs = readme_outcomes
  kept = engine.run_config.read(os.path.join(runs, "mirrored"))
  assert (kept["strategy"], kept["num_cpu_devices"], kept["precision"],
          kept["accumulation_steps"], kept["clip_norm"]) == (
              "mirrored", 2, "mixed_bfloat16", 2, 1.0)
  mirrored, = [o for o in outcomes if "--model_dir=runs/mirrored" in o["command"]]
  assert "train | step 20/20" in mirrored["stderr"]
  assert np.isfinite(events.final_scalars(os.path.join(runs, "mirrored"))["Overview/loss"])
