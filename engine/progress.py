"""The text a person reads while a run goes: one fixed-format line per loop.

The lines reach a person from research code as well as from the scripts:
through absl logging when it shows INFO (the scripts), else on stderr.
"""

import datetime
import sys

from absl import logging


def show(line: str) -> None:
  """Logs `line` at INFO if absl logging shows INFO, else prints it to stderr."""
  if logging.level_info():
    logging.info(line)
  else:
    print(line, file=sys.stderr, flush=True)


class Speed:
  """Steps per second over this process's loops that compiled nothing, for the ETA.

  A loop that traced or compiled a program (the first, and the first with
  diagnostics) would make the ETA of a long run many times too long.
  """

  def __init__(self):
    self.steps = 0
    self.seconds = 0.0

  def add(self, steps: int, seconds: float, compiled: bool) -> None:
    if not compiled:
      self.steps += steps
      self.seconds += seconds

  def eta(self, remaining_steps: int):
    """Seconds until `remaining_steps` are done, or None before a loop without compiling."""
    if self.steps == 0 or self.seconds <= 0:
      return None
    return max(remaining_steps, 0) * self.seconds / self.steps


def train_line(step: int, total_steps: int, results: dict, head_names,
               steps_per_second: float, eta_seconds=None) -> str:
  """`train | step 1200/5000 | loss 0.412 | digit 0.310 parity 0.090 | 812.0 steps/s | eta 0:00:05`.

  Without `eta_seconds` (the first loop compiles), the ETA reads `eta -:--:--`.
  """
  head_losses = " ".join(f"{name} {results[f'{name}/loss']:.4f}" for name in head_names)
  eta = "-:--:--" if eta_seconds is None else datetime.timedelta(seconds=round(eta_seconds))
  return (f"train | step {step}/{total_steps} | loss {results['loss']:.4f} | "
          f"{head_losses} | {steps_per_second:.1f} steps/s | eta {eta}")


def eval_line(step: int, results: dict) -> str:
  """`eval | step 1200 | loss 0.51 | digit/accuracy 0.93 ...`."""
  metrics = " ".join(f"{key} {value:.4f}" for key, value in results.items() if key != "loss")
  return f"eval | step {step} | loss {results['loss']:.4f} | {metrics}"


def metrics_table(results: dict, head_names) -> str:
  """A per-head table of evaluation metrics, one row per head."""
  rows = [("head", "metric", "value")]
  for name in head_names:
    for key in sorted(results):
      if key.startswith(f"{name}/"):
        rows.append((name, key[len(name) + 1:], f"{results[key]:.4f}"))
  rows.append(("(all)", "loss", f"{results['loss']:.4f}"))
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
           for row in rows]
  lines.insert(1, "  ".join("-" * width for width in widths))
  return "\n".join(lines)
