r"""Throughput of the engine against Keras `fit` and a bare XLA loop, in one process.

  python scripts/benchmark.py                 # the full run BENCHMARKS.md reports
  python scripts/benchmark.py --quick         # a few steps: checks that it works

Prints steps/s per runner, the engine's ratio to each, GFLOP/s against the
machine's XLA matmul peak measured in the same run, and the time to the
first finished step (trace + compile).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from engine import benchmark

_QUICK = flags.DEFINE_boolean("quick", False, "A few steps and one repetition (for tests).")
_STEPS = flags.DEFINE_integer("steps", 2000, "Timed steps per runner and repetition.",
                              lower_bound=50)
_REPETITIONS = flags.DEFINE_integer("repetitions", 5, "Interleaved repetitions; medians are "
                                    "reported.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Batch size.", lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # The engine's progress lines are not the output.
  steps, repetitions = (100, 1) if _QUICK.value else (_STEPS.value, _REPETITIONS.value)
  peak = benchmark.matmul_gflops(repeats=2 if _QUICK.value else 10)
  results = benchmark.run(_BATCH_SIZE.value, steps, repetitions)
  print(benchmark.report(results, _BATCH_SIZE.value, peak))


if __name__ == "__main__":
  app.run(main)
