"""The fixed-format progress line and the final metrics table."""

from engine import progress

_RESULTS = {"loss": 0.4123, "digit/loss": 0.31, "digit/accuracy": 0.9, "parity/loss": 0.09}


def test_train_line_has_step_total_losses_speed_and_eta():
  line = progress.train_line(1200, 5000, _RESULTS, ["digit", "parity"], 800.0, 4.75)
  assert line == ("train | step 1200/5000 | loss 0.4123 | digit 0.3100 parity 0.0900 | "
                  "800.0 steps/s | eta 0:00:05")
  assert progress.train_line(1200, 5000, _RESULTS, ["digit"], 800.0).endswith("eta -:--:--")


def test_metrics_table_has_one_row_per_head_metric_and_the_total():
  table = progress.metrics_table(_RESULTS, ["digit", "parity"]).splitlines()
  assert table[0].split() == ["head", "metric", "value"]
  assert table[2].split() == ["digit", "accuracy", "0.9000"]
  assert table[-1].split() == ["(all)", "loss", "0.4123"]
  assert len(table) == 2 + 3 + 1
