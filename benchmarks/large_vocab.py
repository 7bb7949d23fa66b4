"""Memory and time of a training step of the fused large-vocabulary head.

Compares `heads.LargeVocabSoftmaxHead` with the plain `heads.SoftmaxHead` on
the same problem (by default 65,536 classes, 2,048 tokens of width 256): one
XLA-compiled step computes the loss, its gradients for the features (what
the trunk would receive) and for the projection, and applies Adam.

Each head runs in its own fresh process, so one head's buffers cannot hide
in the other's peak. Memory is the peak resident set during the timed steps
(Linux's VmHWM, reset through /proc/self/clear_refs after the warm-up) above
the resident set once the head and optimizer are built, before the first
step. TensorFlow keeps a step's working buffers between steps (the resident
set after a step stays near its peak), so this is what training costs in
memory; it includes the compiled program and runtime, about 90 MB for
either head here (seen with 512 classes). The compiler's freed heap is
handed back (`malloc_trim`) before the peak is reset.
"""

import ctypes
import dataclasses
import functools
import multiprocessing
import statistics
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

import heads
from heads import large_vocab


@dataclasses.dataclass(frozen=True)
class Problem:
  vocab_size: int = 65_536
  tokens: int = 2_048
  width: int = 256
  chunk_size: Optional[int] = None  # The head's default.
  steps: int = 5


@dataclasses.dataclass
class Measurement:
  step_seconds: float  # Median over the timed steps.
  peak_megabytes: float  # Peak resident set above the one before the steps.
  loss: float  # Mean token loss at the first step: both heads must agree.


def _resident_kilobytes(field: str) -> int:
  with open("/proc/self/status", encoding="ascii") as status:
    for line in status:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}; this benchmark needs Linux.")


def _measure(problem: Problem, fused: bool, shared_process: bool = False) -> Measurement:
  """Builds one head, compiles its step, times it (in a fresh process, but with --quick)."""
  keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  features = tf.constant(rng.normal(size=(problem.tokens, problem.width)), tf.float32)
  labels = tf.constant(rng.integers(0, problem.vocab_size, problem.tokens))
  head = (heads.LargeVocabSoftmaxHead("lm", problem.vocab_size, chunk_size=problem.chunk_size)
          if fused else heads.SoftmaxHead("lm", problem.vocab_size))
  head(features[:1])  # Builds the projection.
  variables = head.trainable_variables
  optimizer = keras.optimizers.Adam(1e-3)
  optimizer.build(variables)
  built = _resident_kilobytes("VmRSS")

  @tf.function(jit_compile=True)
  def step(features):
    with tf.GradientTape() as tape:
      tape.watch(features)
      output = head(features, training=True)
      loss_sum, weight_sum, _ = head.loss_terms(labels, output, None, training=True)
      loss = loss_sum / weight_sum
    d_features, *gradients = tape.gradient(loss, [features, *variables])
    optimizer.apply(gradients, variables)
    # The features' gradient is used, as the trunk would use it.
    return loss, tf.reduce_sum(tf.abs(d_features))

  first_loss = float(step(features)[0])  # Compiles.
  step(features)[0].numpy()
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  if shared_process:  # The trim may hand back what an earlier head left, below `built`.
    built = min(built, _resident_kilobytes("VmRSS"))
  with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
    clear_refs.write("5")  # Resets the peak resident set (VmHWM) to the current one.
  times = []
  for _ in range(problem.steps):
    start = time.perf_counter()
    step(features)[0].numpy()
    times.append(time.perf_counter() - start)
  peak = _resident_kilobytes("VmHWM") - built
  return Measurement(statistics.median(times), peak / 1024, first_loss)


def _child(problem, fused, queue):
  queue.put(_measure(problem, fused))


def _in_fresh_process(problem: Problem, fused: bool) -> Measurement:
  context = multiprocessing.get_context("spawn")
  queue = context.Queue()
  process = context.Process(target=_child, args=(problem, fused, queue))
  process.start()
  result = queue.get()
  process.join()
  if process.exitcode != 0:
    raise RuntimeError(f"The {'fused' if fused else 'plain'} head's process failed "
                       f"(exit code {process.exitcode}).")
  return result


def run(problem: Problem, repetitions: int = 2, fresh_processes: bool = True) -> dict:
  """{"plain": Measurement, "fused": Measurement}: medians over interleaved processes.

  `fresh_processes=False` (scripts/benchmark.py --quick, a check that it runs)
  measures both in this process: quicker, but the second head's peak then
  stands on the first's leftovers, so the memory figures mean little.
  """
  measure = (_in_fresh_process if fresh_processes
             else functools.partial(_measure, shared_process=True))
  runs = {"plain": [], "fused": []}
  for _ in range(repetitions):
    for name in runs:
      runs[name].append(measure(problem, fused=name == "fused"))
  return {name: Measurement(statistics.median(m.step_seconds for m in measured),
                            statistics.median(m.peak_megabytes for m in measured),
                            measured[0].loss)
          for name, measured in runs.items()}


def report(results: dict, problem: Problem) -> str:
  plain, fused = results["plain"], results["fused"]
  chunk_size = problem.chunk_size or large_vocab.default_chunk_size(problem.vocab_size)
  lines = [f"large vocabulary: {problem.vocab_size} classes, {problem.tokens} tokens, width "
           f"{problem.width}, fused chunks of {chunk_size} tokens",
           "head    step (s)   peak memory (MB)   first loss",
           "------  ---------  -----------------  ----------"]
  for name, measurement in results.items():
    lines.append(f"{name:<6}  {measurement.step_seconds:9.3f}  "
                 f"{measurement.peak_megabytes:17.1f}  {measurement.loss:10.4f}")
  lines.append(f"fused/plain: time {fused.step_seconds / plain.step_seconds:.2f}x, "
               f"peak memory {fused.peak_megabytes / plain.peak_megabytes:.2f}x")
  return "\n".join(lines)
