"""The benchmark runs every runner on a model and reports ratios and targets;
its timings are not asserted here (BENCHMARKS.md holds them)."""

import os
import re
import sys

import numpy as np

from benchmarks import multitask
from benchmarks import throughput

from tests import warm_python

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NUMBER = r"([\d.]+)"


def test_flops_per_step_is_six_times_the_multiply_adds():
  multiply_adds = 256 * 512 + 512 * 512 + 512 * (10 + 2 + 4)
  model = throughput.Model(256, (512, 512))
  assert throughput.flops_per_step(model, 256) == 6 * 256 * multiply_adds


def test_report_states_each_target_and_whether_it_is_met():
  measured = {"engine": throughput.Measurement(100.0, 3.0),
              "fit_spe1": throughput.Measurement(50.0, 2.0),
              "fit_spe50": throughput.Measurement(96.0, 2.0),
              "bare_loop": throughput.Measurement(110.0, 1.0)}
  text = throughput.report(throughput.MODELS[1], measured, 256, peak_gflops=100.0)
  assert "target engine/bare_loop steps/s >= 0.95: 0.91 (MISSED)" in text
  assert "target engine/fastest fit steps/s >= 1.05: 1.04 (MISSED)" in text
  assert "target engine/bare_loop first call <= 2.0: 3.00 (MISSED)" in text
  measured["engine"] = throughput.Measurement(106.0, 1.5)
  text = throughput.report(throughput.MODELS[1], measured, 256, peak_gflops=100.0)
  assert text.count("(met)") == 3, text
  assert re.search(r"^fit_spe50\s+96\.0\s+1\.10\s", text, re.MULTILINE), text


def test_quick_benchmark_prints_every_runner_and_both_large_vocabulary_heads():
  result = warm_python.run([sys.executable, os.path.join(_ROOT, "scripts", "benchmark.py"),
                           "--quick", "--model=small"], capture_output=True, text=True,
                           timeout=600, cwd=_ROOT, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {match.group(1): [float(v) for v in match.group(2, 3, 4, 5, 6)]
          for match in re.finditer(rf"^(engine|fit_spe1|fit_spe50|bare_loop|bare_loop10)\s+{_NUMBER}\s+"
                                   rf"{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}$",
                                   result.stdout, re.MULTILINE)}
  assert set(rows) == set(throughput.RUNNERS), result.stdout
  assert all(value > 0 for values in rows.values() for value in values)
  assert len(re.findall(r"^target .*: [\d.]+ \((met|MISSED)\)$", result.stdout,
                        re.MULTILINE)) == 3, result.stdout
  assert "model: 32 features, 2 x Dense(64), float32, batch 256" in result.stdout
  heads = {match.group(1): [float(v) for v in match.group(2, 3, 4)]
           for match in re.finditer(r"^(plain|fused)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
                                    result.stdout, re.MULTILINE)}
  assert set(heads) == {"plain", "fused"}, result.stdout
  assert all(seconds > 0 and megabytes > 0 for seconds, megabytes, _ in heads.values())
  assert heads["fused"][2] == heads["plain"][2]  # The same first loss.
  assert re.search(r"fused/plain: time [\d.]+x, peak memory [\d.]+x", result.stdout)


def test_the_multitask_benchmark_prints_each_method_with_delta_m_and_step_time():
  result = warm_python.run([sys.executable, os.path.join(_ROOT, "scripts", "benchmark.py"),
                           "--multitask", "--quick", "--methods=famo"],
                           capture_output=True, text=True, timeout=600, cwd=_ROOT, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  for task, heads in (("demo", "digit/accuracy  parity/accuracy  box/mae"),
                      ("conflict", "near/mae  far/mae")):
    assert re.search(rf"^task: {task} \(1 seeds\)\nmethod +{heads} +delta_m% +\+- +"
                     r"step_time/sum$", result.stdout, re.MULTILINE), result.stdout
  rows = re.findall(r"^(sum|famo) +([-\d. +]+)$", result.stdout, re.MULTILINE)
  assert [method for method, _ in rows] == ["sum", "famo"] * 2, result.stdout
  for method, values in rows:
    numbers = [float(v) for v in values.split()]
    assert all(np.isfinite(numbers)) and numbers[-1] > 0
    if method == "sum":  # The baseline against itself.
      assert numbers[-3:] == [0.0, 0.0, 1.0]


def test_delta_m_counts_improvements_as_positive_whatever_the_direction():
  baseline = np.array([[0.8, 2.0]])  # accuracy (higher better), mae (lower better)
  better = np.array([[0.88, 1.0], [0.8, 2.0]])
  deltas = multitask.delta_m(better, baseline, ["a/accuracy", "b/mae"])
  np.testing.assert_allclose(deltas, [100 * (0.1 + 0.5) / 2, 0.0])
