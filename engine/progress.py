"""The text a person reads while a run goes: one fixed-format line per loop."""

import datetime


def train_line(step: int, total_steps: int, results: dict, head_names,
               steps_per_second: float) -> str:
  """`train | step 1200/5000 | loss 0.412 | digit 0.310 parity 0.090 | 812.0 steps/s | eta 0:00:05`."""
  remaining = max(total_steps - step, 0) / steps_per_second if steps_per_second > 0 else 0
  head_losses = " ".join(f"{name} {results[f'{name}/loss']:.4f}" for name in head_names)
  eta = datetime.timedelta(seconds=round(remaining))
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
