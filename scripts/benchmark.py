r"""Throughput of the engine against Keras `fit` and a bare XLA loop on two models;
then memory and time of the fused large-vocabulary head against the plain one.

  python scripts/benchmark.py                 # the full run BENCHMARKS.md reports
  python scripts/benchmark.py --quick         # a few steps, all in this process: checks
                                              # that it works (the tests run this)
  python scripts/benchmark.py --precision=mixed_float16   # on a GPU
  python scripts/benchmark.py --multitask     # every multi-task method side by side

Prints, per model, steps/s per runner and the engine's ratio to each,
GFLOP/s, each runner's first call (in a fresh process: building, tracing,
compiling and its first 50 steps) and whether the targets are met. Then,
for `LargeVocabSoftmaxHead` and `SoftmaxHead` each in fresh processes, the
training step's time and its peak memory, and their ratios.
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# benchmarks/ sits beside engine/ at the top of the repository, outside the library.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging

from benchmarks import large_vocab  # pylint: disable=wrong-import-position
from benchmarks import multitask
from benchmarks import throughput

_QUICK = flags.DEFINE_boolean("quick", False, "A few steps and one repetition (for tests).")
_STEPS = flags.DEFINE_integer("steps", 2000, "Timed steps per runner and repetition.",
                              lower_bound=50)
_REPETITIONS = flags.DEFINE_integer("repetitions", 5, "Interleaved repetitions; the best "
                                    "is reported.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Batch size.", lower_bound=1)
_MODELS = flags.DEFINE_multi_enum("model", ["large", "small"], ["large", "small"],
                                  "Throughput models: large = 256 features, 2 x Dense(512); "
                                  "small = 32 features, 2 x Dense(64).")
_PRECISION = flags.DEFINE_enum("precision", "float32",
                               ["float32", "mixed_float16", "mixed_bfloat16"],
                               "Keras dtype policy of every runner.")
_THROUGHPUT = flags.DEFINE_boolean("throughput", True, "Run the throughput comparison.")
_LARGE_VOCAB = flags.DEFINE_boolean("large_vocab", True, "Run the large-vocabulary comparison.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 65_536, "Large-vocabulary classes.",
                                   lower_bound=2)
_TOKENS = flags.DEFINE_integer("tokens", 2_048, "Large-vocabulary tokens per step.",
                               lower_bound=1)
_WIDTH = flags.DEFINE_integer("width", 256, "Large-vocabulary feature width.", lower_bound=1)
_MULTITASK = flags.DEFINE_boolean(
    "multitask", False, "Instead: every aggregation and weighting on the demo and on a "
    "conflicting task set, several seeds (benchmarks/multitask.py).")
_MULTITASK_SEEDS = flags.DEFINE_integer("multitask_seeds", 3, "With --multitask: seeds per "
                                        "method and task set.", lower_bound=1)
_MULTITASK_STEPS = flags.DEFINE_integer("multitask_steps", 400, "With --multitask: training "
                                        "steps per run.", lower_bound=2)
_METHODS = flags.DEFINE_multi_enum("methods", list(multitask.METHODS), multitask.METHODS,
                                   "With --multitask: the methods ('sum' is the baseline).")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", None, "Tokens per chunk of the fused head; "
                                   "unset: the head's default.", lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # The engine's progress lines are not the output.
  if _MULTITASK.value:
    methods = ["sum"] + [m for m in dict.fromkeys(_METHODS.value) if m != "sum"]
    print(multitask.main(methods, quick=_QUICK.value, seeds=_MULTITASK_SEEDS.value,
                         steps=_MULTITASK_STEPS.value))
    return
  steps, repetitions = (100, 1) if _QUICK.value else (_STEPS.value, _REPETITIONS.value)
  if _THROUGHPUT.value:
    peak = throughput.matmul_gflops(repeats=2 if _QUICK.value else 10)
    models = {"large": throughput.MODELS[0], "small": throughput.MODELS[1]}
    for name in dict.fromkeys(_MODELS.value):
      model = dataclasses.replace(models[name], precision=_PRECISION.value)
      results = throughput.run(model, _BATCH_SIZE.value, steps, repetitions,
                               fresh_processes=not _QUICK.value)
      print(throughput.report(model, results, _BATCH_SIZE.value, peak), flush=True)
  if _LARGE_VOCAB.value:
    problem = (large_vocab.Problem(vocab_size=4096, tokens=256, width=64, chunk_size=64,
                                   steps=2) if _QUICK.value else
               large_vocab.Problem(_VOCAB_SIZE.value, _TOKENS.value, _WIDTH.value,
                                   _CHUNK_SIZE.value))
    results = large_vocab.run(problem, repetitions=1 if _QUICK.value else 2,
                              fresh_processes=not _QUICK.value)
    print(large_vocab.report(results, problem))


if __name__ == "__main__":
  app.run(main)
