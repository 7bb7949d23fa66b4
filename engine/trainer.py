"""The Trainer: the public face of the engine, wiring its parts together.

    trainer = engine.Trainer(trunk=..., heads=[...], optimizer=..., config=...)
    trainer.train(dataset, steps)   # until the global step reaches `steps`
    trainer.evaluate(dataset); trainer.predict(features); trainer.export()

What runs where: `engine.loop` holds the compiled loops, `engine.replica_step`
one replica's step, `engine.step` its math, `engine.update` the update,
`engine.measurements` the sums and metrics, `engine.halting` why a loop
stopped applying steps, `engine.checkpointing` and `engine.preemption` what
survives a crash, `engine.training` one `train` call on the host (after
each loop, one host call, the loop's, which returns its report: the
results, the counters and the summaries; then summaries, the progress line,
checkpoints and evaluations).
"""

import collections
import contextlib

from absl import logging
import keras
import tensorflow as tf

from engine import checkpointing
from engine import distribution
from engine import export as export_lib
from engine import halting as halting_lib
from engine import iterators
from engine import loop as loop_lib
from engine import measurements as measurements_lib
from engine import model as model_lib
from engine import multitask
from engine import pictures as pictures_lib
from engine import precision as precision_lib
from engine import preemption
from engine import progress
from engine import replica_step
from engine import reporting
from engine import summaries as summaries_lib
from engine import training
from engine import update as update_lib
from engine import validation
from engine import writer
from engine.config import Config

Preempted = preemption.Preempted


class Trainer:
  """Trains, evaluates and predicts with a shared trunk and named heads.

  Args:
    trunk: any Keras layer or model; returns one tensor or a dict of named
      features that heads select with their `input`.
    heads: a list of `heads.Head`, with unique names.
    optimizer: a Keras 3 optimizer (learning-rate schedules work). Under
      `precision="mixed_float16"` it is wrapped in a LossScaleOptimizer.
    config: an `engine.Config`.

  With several replicas, create the trunk, heads, optimizer and Trainer
  inside the strategy's scope (`engine.create_strategy(config).scope()`).
  Variables are created on the first call of `train`, `evaluate` or
  `predict` (or an explicit `build`), from the shapes of the data; the
  latest checkpoint in `config.model_dir`, if any, is restored then.
  """

  def __init__(self, *, trunk, heads, optimizer, config: Config):
    if not isinstance(config, Config):
      raise TypeError(f"config must be an engine.Config; received {type(config).__name__}.")
    if not isinstance(optimizer, keras.optimizers.Optimizer):
      raise TypeError(
          f"optimizer must be a Keras 3 optimizer; received {type(optimizer).__name__}.")
    self.config = config
    checkpointing.check_writable(config.model_dir)
    if config.deterministic:
      # Process-wide: ops without a deterministic kernel now raise instead of
      # varying from run to run (seeds are set in `build`).
      tf.config.experimental.enable_op_determinism()
    self.strategy = distribution.current_or_single(config.strategy, config.tpu,
                                                   config.num_cpu_devices)
    self.replicas = self.strategy.num_replicas_in_sync
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    with self.strategy.scope():
      self.model = model_lib.MultiHeadModel(trunk, heads)
      self.heads = list(self.model.head_list)
      precision_lib.check_layers(config.precision, [trunk, *self.heads])
      self.optimizer = precision_lib.loss_scaled(config.precision, optimizer)
      distribution.check_created_in_scope(self.strategy, self.optimizer, self.heads)
      def counter(name, value=0):
        return tf.Variable(value, dtype=tf.int64, trainable=False, name=name, aggregation=first)
      self.global_step = counter("global_step")
      self.skipped_steps = counter("skipped_steps")
      self.consecutive_skips = counter("consecutive_skips")
      # Per head, in head order: steps skipped because that head's loss was not finite.
      self.nonfinite_losses = counter("nonfinite_losses", tf.zeros([len(self.heads)], tf.int64))
      self.measurements = measurements_lib.Measurements(self.heads, self.replicas)
      self.pictures = pictures_lib.EvalPictures(self.heads)
      self.balancing = multitask.HeadBalancing(self.heads, config.aggregation,
                                               config.aggregation_option_values,
                                               config.head_diagnostics, self.replicas)
    self.is_chief = self.strategy.extended.should_checkpoint
    self._writer = writer.WriterLock(config.model_dir)
    self.checkpoints = checkpointing.Checkpoints(
        model=self.model, optimizer=self.optimizer, strategy=self.strategy,
        model_dir=config.model_dir, max_to_keep=config.max_checkpoints,
        partial_restore=config.partial_restore,
        counters={"global_step": self.global_step, "skipped_steps": self.skipped_steps,
                  "consecutive_skips": self.consecutive_skips,
                  "nonfinite_losses": self.nonfinite_losses})
    self.summaries = summaries_lib.SummaryWriters(self.checkpoints.own_dir, self.heads,
                                                  config.precision)
    # The report of evaluation and of a loop the data ended (a training loop's call
    # returns its own), and the reset before a train or evaluate call.
    self.read_report = tf.function(lambda full: reporting.report(self, full), autograph=False)
    # Eager: once per `train` or `evaluate` call, a few ms, where tracing it cost
    # ~0.15 s of the first call.
    self.reset_measurements = lambda guard: reporting.reset(self, guard)
    if config.best_metric is not None and config.best_metric not in self.metric_names:
      raise ValueError(f"best_metric={config.best_metric!r} is not an evaluation result of "
                       f"these heads; choose one of {self.metric_names}.")
    self._features_spec = None
    # How often each compiled function was traced; a test keeps this at 1.
    self.trace_counts = collections.Counter()
    self.loops = None
    self._training = training.Training(self)
    self._predict = tf.function(self._predict_fn, jit_compile=config.jit_compile,
                                reduce_retracing=True, autograph=False)

  # --- public API ------------------------------------------------------------

  @property
  def step(self) -> int:
    return int(self.global_step.numpy())

  @property
  def last_train_scalars(self) -> dict:
    """What the last training loop wrote to TensorBoard (and its example count)."""
    return self._training.last_train_scalars

  @property
  def latest_checkpoint(self):
    """Path of the newest checkpoint in model_dir, or None."""
    return self.checkpoints.latest

  @property
  def restored_checkpoint(self):
    """The checkpoint `build` restored (the newest readable one), or None."""
    return self.checkpoints.restored

  @property
  def metric_names(self) -> list:
    """The keys of `evaluate`'s results: "loss", "<head>/loss", "<head>/<metric>", ..."""
    return sorted(self.measurements.results(self.global_step, full=True))

  def build(self, features_spec):
    """Creates all variables for features of this spec and restores the latest checkpoint.

    Called by `train`, `evaluate` and `predict`; call it directly to restore
    a model without data (e.g. before `predict` or export). `features_spec`
    has the global batch dimension (or None).
    """
    if self._features_spec is not None:
      return
    if self.config.seed is not None:
      keras.utils.set_random_seed(self.config.seed)
    with self.strategy.scope():
      model_lib.build(self.model, features_spec)
      self.optimizer.build(self.model.trainable_variables)
      self.checks = validation.BatchChecks(self.heads, features_spec)
      self.halting = halting_lib.Halting(self.checks.rows, len(self.heads))
    self.checkpoints.bind()
    self.balancing.configure(self.model)
    self._features_spec = features_spec
    self.update = update_lib.GradientUpdate(
        self.optimizer, self.model.trainable_variables, self.replicas, self.config.clip_norm,
        self.skipped_steps, self.nonfinite_losses, self.consecutive_skips)
    full = self.config.train_metrics == "full"
    self.loops = loop_lib.Loops(self.strategy,
                                 replica_step.ReplicaStep(self, compile_gradients=self.replicas > 1),
                                 self.config.jit_compile, self.trace_counts,
                                 report=lambda: reporting.report(self, full),
                                 steps_per_program=self.config.steps_per_program,
                                 steps_per_loop=self.config.steps_per_loop)
    self.checkpoints.restore_latest_readable(move_damaged=self._writer.held)
    if self.checkpoints.restored is None and self.config.init_checkpoint:
      self.checkpoints.warm_start(self.config.init_checkpoint, self.config.init_modules)

  def train(self, dataset: tf.data.Dataset, steps: int, eval_dataset=None) -> dict:
    """Trains until the global step reaches `steps`.

    On SIGTERM (Ctrl-C), finishes the loop in flight, saves a checkpoint and
    raises `Preempted`, exit code 42 (`Interrupted`, 130). It holds
    model_dir's writer lock meanwhile (`engine.writer`). `dataset` yields
    global batches; they are split over the replicas (the same dataset object in a later call goes on
    where this call stopped). A rerun of the same call after a crash resumes
    from the latest checkpoint and finishes the same job. With
    `eval_dataset`, evaluates every `config.eval_every` steps (if set) and at
    the end, and returns the final evaluation's results; without, returns
    the last training loop's.
    """
    features_spec = validation.check_train_arguments(dataset, steps, eval_dataset, self.heads,
                                                     self.config.best_metric)
    distribution.check_batch_divides(features_spec, self.replicas, self.config.accumulation_steps)
    with self._writing():
      return self._training.run(dataset, features_spec, steps, eval_dataset)

  def evaluate(self, dataset: tf.data.Dataset, steps=None) -> dict:
    """Evaluates on `steps` batches (default `config.eval_steps`, else all).

    Returns a flat dict: "loss" (the weighted total), "<head>/loss",
    "<head>/weighted_loss" and "<head>/<metric>", each computed from sums
    over every evaluated example (and replica), not as a mean of batch means.
    """
    steps = self.config.eval_steps if steps is None else steps
    self.build(validation.check_eval_arguments(dataset, steps, self.heads))
    self.reset_measurements(guard=False)
    holder = [iter(self.strategy.experimental_distribute_dataset(dataset))]
    evaluated = self.loops.evaluate(holder[0], steps, self.config.steps_per_loop)
    iterators.release(holder)  # Destroying it may wait on tf.data's autotuner.
    report = reporting.to_numpy(self.read_report(full=True))
    reporting.raise_if_halted(self, report, dataset.element_spec[1], evaluation=True)
    if evaluated == 0:
      raise ValueError("The evaluation dataset is empty: it produced no batch.")
    results = report["results"]
    self.summaries.write_scalars("eval", results, self.step)
    if self.config.eval_pictures:
      with self.summaries.as_default("eval", self.step):
        self.pictures.write(report["reliability"])
    progress.show(progress.eval_line(self.step, results))
    return results

  def predict(self, features) -> dict:
    """Returns {head: head.predict(logits)} as NumPy arrays, e.g.
    {"digit": {"probabilities", "classes"}, "box": {"values"}}."""
    features = tf.nest.map_structure(tf.convert_to_tensor, features)
    self.build(tf.nest.map_structure(tf.TensorSpec.from_tensor, features))
    outputs = self._predict(features)
    return tf.nest.map_structure(lambda tensor: tensor.numpy(), outputs)

  def export(self, path=None) -> str:
    """Writes a serving SavedModel and returns its path.

    Its `serving_default` signature takes the raw features (any batch size)
    and returns `<head>/probabilities` and `<head>/classes`, or
    `<head>/values`, as `predict` does. The default path is
    `model_dir/export/<global step>`, the numbered-version layout TF Serving
    loads (a step already exported gets the next free number, so Serving
    sees a new version). The write is atomic: a crash leaves any earlier export intact.
    """
    if self._features_spec is None:
      raise ValueError(
          "Nothing to export yet: the model has no variables. Call train, evaluate or "
          "predict first, or build(features_spec) to restore the latest checkpoint.")
    if path is None:
      path = export_lib.new_version_path(self.config.model_dir, self.step)
    export_lib.export_saved_model(self.model, self._features_spec, path)
    logging.info("Exported the model at step %d to %s.", self.step, path)
    return path

  def restore(self, checkpoint_path: str):
    """Restores one given checkpoint (e.g. to evaluate it); call after `build`."""
    if self._features_spec is None:
      raise ValueError("restore needs the model's variables: call build(features_spec) first.")
    self.checkpoints.restore(checkpoint_path)

  def save_checkpoint(self, train_dataset=None) -> str:
    """Writes a checkpoint of the current step (replacing one of the same step,
    e.g. after calibration) and returns its path. Never writes non-finite weights.

    Pass the training dataset to keep the input position the restored
    checkpoint held (else a resumed run restarts its pipeline)."""
    if self._features_spec is None:
      raise ValueError("save_checkpoint needs the model's variables: call train, evaluate, "
                       "predict or build(features_spec) first.")
    with self._writing():
      if train_dataset is not None:
        self.checkpoints.train_iterator(train_dataset, self.strategy,
                                        self.config.checkpoint_iterator)
      return self.checkpoints.save(self.step)

  def _writing(self):
    """The model_dir's writer lock (the chief's; other workers write in their own dirs)."""
    return self._writer if self.is_chief else contextlib.nullcontext()

  def best_export(self):
    """The record {"metric", "value", "step", "goal"} of the best export so far, or None."""
    return export_lib.best_export(self.config.model_dir)

  # --- between loops ---------------------------------------------------------

  def evaluate_and_keep_best(self, eval_dataset) -> dict:
    """Evaluates; with `config.best_metric`, exports the model if it is the best so far."""
    results = self.evaluate(eval_dataset)
    if self.is_chief:  # The chief exports.
      export_lib.keep_if_best(self.model, self._features_spec, self.config, results, self.step)
    return results

  def _predict_fn(self, features):
    self.trace_counts["predict"] += 1
    logits = self.model(features, training=False)
    return {head.name: head.predict(logits[head.name]) for head in self.heads}
