"""Every multi-task method side by side: the same model, data and steps, several seeds.

Methods (`METHODS`): static equal weights (`sum`, the baseline), each
gradient aggregation of `engine.aggregation`, and the loss weightings
uncertainty, gradnorm, dwa, famo and rlw. Task sets (`TASKS`):
- demo: the synthetic demo (digit, parity, box) on its Dense trunk;
- conflict: two regression heads through a one-unit bottleneck, whose best
  trunk directions are orthogonal, one target 100x the other's scale, so
  with equal weights the large head takes the whole trunk.
Per method: each head's final evaluation metric (mean over seeds), delta-m %
(the mean relative improvement over `sum` across heads, positive = better,
as LibMTL counts it; mean and spread over seeds), and the steady-state
step time relative to `sum` (XLA, the last loop's steps/s).
"""

import dataclasses
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import engine
import heads as heads_lib
from engine import aggregation

WEIGHTINGS = ("uncertainty", "gradnorm", "dwa", "famo", "rlw")
METHODS = ("sum",) + aggregation.METHODS + WEIGHTINGS
HIGHER_IS_BETTER = ("accuracy",)


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  heads: str  # heads.parse_heads text.
  hidden: tuple


TASKS = (Task("demo", engine.data.DEMO_HEADS.replace(":0.5", "").replace(":0.25", ""),
              (64, 64)),
         Task("conflict", "near:regression:1,far:regression:1", (16, 1)))


def _conflict_data(split, batch_size, count=4096):
  rng = np.random.default_rng({"train": 0, "eval": 1}[split])
  x = rng.normal(size=(count, 8)).astype(np.float32)
  labels = {"near": x[:, :1] + 0.1 * rng.normal(size=(count, 1)).astype(np.float32),
            "far": 100.0 * x[:, 1:2]}
  data = tf.data.Dataset.from_tensor_slices((x, labels))
  return data.repeat().batch(batch_size) if split == "train" else data.batch(batch_size)


def _data(task, split, batch_size):
  if task.name == "conflict":
    return _conflict_data(split, batch_size)
  if split == "train":
    return engine.data.synthetic("train", batch_size, num_examples=8192)
  return engine.data.synthetic("eval", batch_size, num_examples=2048)


def _trainer(task, method, seed, steps_per_loop, jit_compile, model_dir):
  weighting = method if method in WEIGHTINGS else "static"
  head_list = heads_lib.parse_heads(task.heads, weighting=weighting)
  keras.utils.set_random_seed(seed)
  trunk = keras.Sequential([keras.layers.Dense(units, activation=None if units == 1 else "relu")
                            for units in task.hidden])  # A one-unit layer: the bottleneck.
  return engine.Trainer(
      trunk=trunk, heads=head_list, optimizer=keras.optimizers.Adam(1e-2),
      config=engine.Config(model_dir=model_dir, seed=seed,
                           steps_per_loop=steps_per_loop, jit_compile=jit_compile,
                           head_diagnostics=False,
                           aggregation=method if method in aggregation.METHODS else "sum"))


def _main_metric(results, head):
  return results[f"{head.name}/{head.main_metric}"]


def run(methods=METHODS, tasks=TASKS, seeds=(0, 1, 2), steps=400, steps_per_loop=100,
        batch_size=64, jit_compile=True):
  """{(task, method): {"metrics": [seeds, heads], "speed": [seeds], "heads": [...]}}."""
  results = {}
  with tempfile.TemporaryDirectory(prefix="multitask-") as root:  # The runs' model_dirs.
    for task in tasks:
      for method in methods:
        metrics, speeds = [], []
        for seed in seeds:
          trainer = _trainer(task, method, seed, steps_per_loop, jit_compile,
                             f"{root}/{task.name}-{method}-{seed}")
          trainer.train(_data(task, "train", batch_size), steps=steps)
          speeds.append(trainer.last_train_scalars["steps_per_second"])
          evaluated = trainer.evaluate(_data(task, "eval", batch_size))
          metrics.append([_main_metric(evaluated, head) for head in trainer.heads])
          names = [f"{head.name}/{head.main_metric}" for head in trainer.heads]
        results[task.name, method] = {"metrics": np.array(metrics), "speed": np.array(speeds),
                                      "heads": names}
  return results


def delta_m(metrics, baseline, names):
  """Per seed: 100 * mean over heads of the relative improvement over the baseline's mean."""
  reference = baseline.mean(axis=0)
  signs = np.array([1.0 if name.rsplit("/", 1)[1] in HIGHER_IS_BETTER else -1.0
                    for name in names])
  return 100.0 * np.mean(signs * (metrics - reference) / np.abs(reference), axis=1)


def report(results) -> str:
  lines = []
  for task in dict.fromkeys(task for task, _ in results):
    base = results[task, "sum"]
    names = base["heads"]
    lines.append(f"task: {task} ({len(base['speed'])} seeds)")
    header = ["method", *names, "delta_m%", "+-", "step_time/sum"]
    rows = [header]
    for (name, method), values in results.items():
      if name != task:
        continue
      deltas = delta_m(values["metrics"], base["metrics"], names)
      rows.append([method, *[f"{v:.4f}" for v in values["metrics"].mean(axis=0)],
                   f"{deltas.mean():+.2f}", f"{deltas.std():.2f}",
                   f"{np.median(base['speed']) / np.median(values['speed']):.2f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
              for row in rows]
  return "\n".join(lines)


def main(methods=METHODS, quick=False, seeds=3, steps=400):
  start = time.perf_counter()
  options = (dict(seeds=(0,), steps=20, steps_per_loop=10, jit_compile=False) if quick
             else dict(seeds=tuple(range(seeds)), steps=steps, steps_per_loop=min(100, steps)))
  results = run(methods=methods, **options)
  return report(results) + f"\n({time.perf_counter() - start:.0f} s)"
