"""The benchmark runs and reports every runner; its timings are not asserted here."""

import os
import re
import subprocess
import sys

from engine import benchmark

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flops_per_step_is_six_times_the_multiply_adds():
  multiply_adds = 256 * 512 + 512 * 512 + 512 * (10 + 2 + 4)
  assert benchmark.flops_per_step(256) == 6 * 256 * multiply_adds


def test_quick_benchmark_prints_every_runner_and_both_large_vocabulary_heads():
  result = subprocess.run([sys.executable, os.path.join(_ROOT, "scripts", "benchmark.py"),
                           "--quick"], capture_output=True, text=True, timeout=300, cwd=_ROOT,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {match.group(1): [float(v) for v in match.group(2, 3, 4, 5, 6)]
          for match in re.finditer(r"^(engine|fit_spe1|fit_spe50|bare_loop)\s+([\d.]+)\s+"
                                   r"([\d.]+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)$",
                                   result.stdout, re.MULTILINE)}
  assert set(rows) == {"engine", "fit_spe1", "fit_spe50", "bare_loop"}, result.stdout
  assert all(value > 0 for values in rows.values() for value in values)
  assert rows["engine"][1] == 1.0  # engine/engine
  assert re.search(r"float32 XLA matmul peak \(2048\^3\): [\d.]+ GFLOP/s", result.stdout)
  heads = {match.group(1): [float(v) for v in match.group(2, 3, 4)]
           for match in re.finditer(r"^(plain|fused)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
                                    result.stdout, re.MULTILINE)}
  assert set(heads) == {"plain", "fused"}, result.stdout
  assert all(seconds > 0 and megabytes > 0 for seconds, megabytes, _ in heads.values())
  assert heads["fused"][2] == heads["plain"][2]  # The same first loss.
  assert re.search(r"fused/plain: time [\d.]+x, peak memory [\d.]+x", result.stdout)
