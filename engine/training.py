"""What one `Trainer.train` call does on the host, around the compiled loops.

Record the run's configuration, build and restore, attach the input
position, then loop: one compiled loop (`engine.loop`), whose call returns
its report, then the summaries, the progress line, the errors the loop
recorded, checkpoints and evaluations; signals are acted on between loops
and after the last one. Kept apart from the Trainer (the facade) because
this is its one long procedure; the state it keeps between calls (the
cluster's preemption handler, loops run, speed) lives here.
"""

import time

from absl import logging
import tensorflow as tf

from engine import halting as halting_lib
from engine import preemption
from engine import progress
from engine import records
from engine import reporting
from engine import run_config
from engine import schedule


class Training:
  """`run` is `Trainer.train` once its arguments are checked; `t` is the Trainer."""

  def __init__(self, trainer):
    self._t = trainer
    self._preemption = None
    self._loops_run = 0
    self._config_recorded = False
    self._speed = progress.Speed()
    self._profiler = schedule.Profiler(trainer.config.profile_steps, trainer.config.model_dir)
    # What the last training loop wrote to TensorBoard (and its example count).
    self.last_train_scalars = {}

  def run(self, dataset, features_spec, steps, eval_dataset) -> dict:
    t = self._t
    if t.is_chief and not self._config_recorded:
      run_config.record(t.config)  # Refuses another model's model_dir before restoring.
      self._config_recorded = True
    t.build(features_spec)
    results = {}
    if t.step >= steps:
      logging.info("Global step %d already reaches steps=%d; nothing to train.", t.step, steps)
    iterator = t.checkpoints.train_iterator(dataset, t.strategy, t.config.checkpoint_iterator)
    if self._preemption is None:
      self._preemption = preemption.cluster_handler(t.strategy, t.checkpoints.manager)
    t.reset_measurements(guard=True)
    step = t.step  # Then read from each loop's report: a read of a variable costs a sync.
    try:
      with preemption.stop_flag(sigterm=self._preemption is None) as stop:
        while step < steps:
          preemption.exit_if_stopped(self._preemption, stop, t.checkpoints, step)
          results, step = self._one_loop(iterator, step, steps, dataset.element_spec[1],
                                         eval_dataset)
        preemption.exit_if_stopped(None, stop, t.checkpoints, step)  # During the last save.
        if eval_dataset is not None:
          return t.evaluate_and_keep_best(eval_dataset)
    finally:
      t.summaries.flush()
    return results

  def _one_loop(self, iterator, start_step, steps, labels_spec, eval_dataset):
    """One compiled loop from `start_step`, then its report, summaries, progress line,
    checkpoint and evaluation; (results, the global step after it)."""
    t = self._t
    num_steps = schedule.loop_length(start_step, steps, t.config)
    self._profiler.maybe_start(start_step)
    start = time.perf_counter()
    traces = sum(t.trace_counts.values())
    try:
      diagnosed = schedule.diagnosed(start_step + num_steps, self._loops_run, t.config)
      try:
        report = t.loops.train(iterator, num_steps, diagnostics=diagnosed)
      except tf.errors.DataLossError as error:  # A corrupt record: keep the steps done.
        t.checkpoints.save_if_new(t.step)
        raise ValueError(f"{records.data_loss_message(error)} Training stopped at step "
                         f"{t.step} (saved).") from error
      self._loops_run += 1
      complete = report is not None
      if not complete:  # The data ended inside the loop: the report of the steps done.
        report = t.read_report(full=t.config.train_metrics == "full")
      report = reporting.to_numpy(report)
    finally:
      self._profiler.maybe_stop(t.step)
    seconds = time.perf_counter() - start
    step = int(report["step"])
    done = step - start_step
    if report["halting"]["reason"] != halting_lib.NONE or not complete:
      t.checkpoints.save_if_new(step)  # The steps before; a bad one was not applied.
    self.last_train_scalars = reporting.train_scalars(
        report, done, seconds, diagnosed=diagnosed and complete and done == num_steps)
    # Each event reaches the file as it is written; the writer is synced with
    # each checkpoint and at the end of `train`, not every loop.
    t.summaries.write_scalars("train", {key: value for key, value in
                                        self.last_train_scalars.items()
                                        if key != "examples"}, step, flush=False)
    results = report["results"]
    self._speed.add(done, seconds, compiled=sum(t.trace_counts.values()) > traces)
    progress.show(progress.train_line(step, steps, results, t.model.head_names,
                                      done / seconds, self._speed.eta(steps - step)))
    reporting.warn_about_probabilities(t.heads, report["halting"]["probabilities"])
    reporting.raise_if_halted(t, report, labels_spec)
    if not complete:
      raise ValueError(
          f"The training dataset ended at global step {step}, before "
          f"reaching steps={steps}: repeat it (dataset.repeat()). The steps "
          "trained so far were saved.")
    if step % t.config.checkpoint_every == 0 or step == steps:
      t.summaries.flush()
      t.checkpoints.save_if_new(step)
    if (eval_dataset is not None and t.config.eval_every
        and step % t.config.eval_every == 0 and step < steps):
      t.evaluate_and_keep_best(eval_dataset)
    return results, step
