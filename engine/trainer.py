"""The Trainer: compiled training and evaluation loops around a multi-head model.

One `tf.function` per mode runs `steps_per_loop` steps in a `tf.range` loop
whose length is a tensor, so it is traced once however often `train` is
called. Each step runs `strategy.run` on one replica's batch:

1. the labels are checked (outside XLA, where TensorFlow's assertions work);
2. each head's loss-weight sum is all-reduced, so every replica divides by
   the weight sum of the global batch;
3. `engine.step.gradients` (XLA-compiled) computes gradients from variable
   values through Keras's `stateless_call`;
4. `engine.update` all-reduces the gradients, unscales them, checks them
   for finiteness and clips them by their global norm, then the Keras
   optimizer applies them.

On one replica, steps 2-4 are one XLA program. On several, XLA compiles
step 3 only: XLA cannot update MirroredVariables from a replica nor
all-reduce on CPU (see BUILD.md). Summaries, progress lines, checkpoints and
evaluations happen on the host between loops.
"""

import collections
import contextlib
import functools
import json
import os
import signal
import socket
import threading
import time

from absl import logging
import keras
import tensorflow as tf

import heads as heads_lib
from engine import distribution
from engine import export as export_lib
from engine import model as model_lib
from engine import multitask
from engine import pictures as pictures_lib
from engine import precision as precision_lib
from engine import progress
from engine import step as step_lib
from engine import summaries as summaries_lib
from engine import update as update_lib
from engine import validation
from engine.config import Config
from engine.config import lower_is_better


BEST_RECORD = "best_metric.json"  # In each best export: which metric, value and step.
PREEMPTED_EXIT_CODE = 42  # As tf.distribute's PreemptionCheckpointHandler exits.


class Preempted(SystemExit):
  """Raised by `train` after SIGTERM, once the current step is checkpointed.

  A SystemExit: uncaught, the process exits with code 42 and no traceback,
  and the scheduler's restart resumes from the checkpoint.
  """

  def __init__(self, step):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.step = step


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
    _check_writable(config.model_dir)
    if config.deterministic:
      # Process-wide: ops without a deterministic kernel now raise instead of
      # varying from run to run (seeds are set in `build`).
      tf.config.experimental.enable_op_determinism()
    self.strategy = self._strategy()
    self._replicas = self.strategy.num_replicas_in_sync
    with self.strategy.scope():
      self.model = model_lib.MultiHeadModel(trunk, heads)
      self.heads = list(self.model.head_list)
      precision_lib.check_layers(config.precision, [trunk, *self.heads])
      self._loss_scaled = config.precision == "mixed_float16"
      if self._loss_scaled and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
      self.optimizer = optimizer
      self._check_created_in_scope()
      self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps",
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      # Per head, in head order: steps skipped because that head's loss was not finite.
      self.nonfinite_losses = tf.Variable(
          tf.zeros([len(self.heads)], tf.int64), trainable=False, name="nonfinite_losses",
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self._head_losses = {head.name: keras.metrics.Mean(name=f"{head.name}/loss")
                           for head in self.heads}
      self._gradient_norm = keras.metrics.Mean(name="gradient_norm")
      self._examples = keras.metrics.Sum(name="examples")
      self._pictures = pictures_lib.EvalPictures(self.heads)
      self._balancing = multitask.HeadBalancing(self.heads, config.pcgrad,
                                                config.head_diagnostics, self._replicas)
    # Keras 3 models hide list and dict attributes from tf.train.Checkpoint,
    # so the checkpoint names the trunk and each head itself.
    self._checkpoint = tf.train.Checkpoint(
        trunk=self.model.trunk, heads={head.name: head for head in self.heads},
        optimizer=self.optimizer, global_step=self.global_step,
        skipped_steps=self.skipped_steps, nonfinite_losses=self.nonfinite_losses)
    # Every worker of a multi-worker job must save (the save is collective),
    # but only the chief into model_dir; the others write into a private
    # directory of their own. All of them restore from model_dir.
    self._is_chief = self.strategy.extended.should_checkpoint
    own_dir = config.model_dir if self._is_chief else tf.io.gfile.join(
        config.model_dir, f".worker-{self.strategy.cluster_resolver.task_id}")
    self._manager = tf.train.CheckpointManager(
        self._checkpoint, own_dir, max_to_keep=config.max_checkpoints,
        step_counter=self.global_step)
    self._read_manager = self._manager if self._is_chief else tf.train.CheckpointManager(
        self._checkpoint, config.model_dir, max_to_keep=config.max_checkpoints)
    self._preemption = None
    self._summaries = summaries_lib.SummaryWriters(own_dir)
    self._profiling = False
    # Between loops: one call each, not an eager op per metric variable
    # (10-15 ms a loop for the benchmark's three heads).
    self._reset_metrics_function = tf.function(self._reset_metrics_fn)
    self._result_tensors = tf.function(self._result_tensors_fn)
    if config.best_metric is not None and config.best_metric not in self.metric_names:
      raise ValueError(f"best_metric={config.best_metric!r} is not an evaluation result of "
                       f"these heads; choose one of {self.metric_names}.")
    self._features_spec = None
    self._inputs_checked = False
    # How often each compiled function was traced; a test keeps this at 1.
    self.trace_counts = collections.Counter()
    jit = config.jit_compile
    fused = self._replicas == 1  # One replica: the whole step is one XLA program.
    self._gradients = tf.function(self._gradients_fn, jit_compile=jit and not fused)
    self._forward = tf.function(self._forward_fn, jit_compile=jit and not fused)
    # With several replicas the step holds all-reduces, which a nested
    # tf.function may not: it is traced inline into the loop instead.
    diagnostic_step = functools.partial(self._train_step_fn, diagnostics=True)
    self._train_step = (tf.function(self._train_step_fn, jit_compile=jit) if fused
                        else self._train_step_fn)
    self._diagnostic_step = (tf.function(diagnostic_step, jit_compile=jit) if fused
                             else diagnostic_step)
    self._eval_step = (tf.function(self._eval_step_fn, jit_compile=jit) if fused
                       else self._eval_step_fn)
    self._train_loop = tf.function(self._train_loop_fn)
    # The last step of each loop also computes the per-head gradient diagnostics.
    self._diagnostic_loop = tf.function(functools.partial(self._train_loop_fn, diagnostics=True))
    self._eval_loop = tf.function(self._eval_loop_fn)
    self._predict = tf.function(self._predict_fn, jit_compile=jit, reduce_retracing=True)

  # --- public API ------------------------------------------------------------

  @property
  def step(self) -> int:
    return int(self.global_step.numpy())

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
    self._track_hidden_variables()
    self._balancing.configure(self.model)
    self._features_spec = features_spec
    self._update = update_lib.GradientUpdate(
        self.optimizer, self.model.trainable_variables, self._replicas, self.config.clip_norm,
        self.skipped_steps, self.nonfinite_losses, self._gradient_norm)
    self._restore_latest_readable()

  def _restore_latest_readable(self):
    """Restores the newest checkpoint that can be read, warning about damaged newer ones.

    A truncated or missing file (a crash while saving, a full disk) makes
    TensorFlow raise a data-loss or not-found error: the next older
    checkpoint is tried. A checkpoint of another model is not damage: it
    stops with an error saying so.
    """
    for path in reversed(self._read_manager.checkpoints):
      try:
        # Partial: the input position is restored when the iterator is attached.
        self._checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
      except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
              IndexError) as error:  # A truncated data file: "Read less bytes than requested".
        logging.warning("Checkpoint %s is damaged and was skipped (%s): %s", path,
                        type(error).__name__, str(error).splitlines()[0])
        continue
      except (ValueError, AssertionError) as error:
        raise ValueError(
            f"Cannot restore the checkpoint {path} into this model: {error} "
            "Was it written for other heads or shapes? Use a new model_dir, or "
            "the same trunk and heads.") from None
      logging.info("Restored %s at step %d.", path, self.step)
      return
    if self._read_manager.checkpoints:
      logging.warning("No readable checkpoint in %s: starting from scratch.",
                      self.config.model_dir)

  def train(self, dataset: tf.data.Dataset, steps: int, eval_dataset=None) -> dict:
    """Trains until the global step reaches `steps`.

    On SIGTERM, finishes the loop in flight, saves a checkpoint and raises
    `Preempted` (exit code 42). `dataset` yields global batches; they are split over the replicas. A
    rerun of the same call after a crash resumes from the latest checkpoint
    and finishes the same job. With `eval_dataset`, evaluates every
    `config.eval_every` steps (if set) and at the end, and returns the final
    evaluation's results; without, returns the last training loop's.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
      raise ValueError(f"steps must be an integer >= 0; received {steps!r}.")
    features_spec, _, _ = validation.check_element_spec(dataset.element_spec, self.heads)
    self._check_batch_divides(features_spec)
    if self.config.best_metric is not None and eval_dataset is None:
      raise ValueError(f"best_metric={self.config.best_metric!r} needs evaluations: pass "
                       "eval_dataset to train (and set eval_every to evaluate during training).")
    if eval_dataset is not None:
      validation.check_element_spec(eval_dataset.element_spec, self.heads)
    self.build(features_spec)
    self._check_heads_get_logits(dataset)
    results = {}
    if self.step >= steps:
      logging.info("Global step %d already reaches steps=%d; nothing to train.", self.step, steps)
    # One replica: a plain tf.data iterator, which checkpoints its position.
    iterator = iter(dataset if self._replicas == 1
                    else self.strategy.experimental_distribute_dataset(dataset))
    self._checkpoint_iterator(iterator)
    self._watch_cluster_preemption()
    with self._sigterm_flag() as preempted:
      while self.step < steps:
        if self._preemption is not None:
          # Multi-worker and TPU jobs: every worker saves the same step, then exits 42.
          self._preemption.save_checkpoint_if_preempted(checkpoint_number=self.step)
        if preempted:
          self._save()
          logging.warning("SIGTERM: saved a checkpoint at step %d; exiting with code %d.",
                          self.step, PREEMPTED_EXIT_CODE)
          raise Preempted(self.step)
        results = self._train_one_loop(iterator, steps, eval_dataset)
    if eval_dataset is not None:
      return self._evaluate_and_keep_best(eval_dataset)
    return results

  def _watch_cluster_preemption(self):
    """Hands SIGTERM to tf.distribute's PreemptionCheckpointHandler on multi-worker and TPU jobs.

    One worker's notice must make every worker save at the same step, which
    needs the cluster's coordination service; the handler does that (and
    exits with code 42). Other strategies use the Trainer's own handler.
    """
    if self._preemption is not None or not isinstance(
        self.strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy)):
      return
    self._preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
        self.strategy.cluster_resolver, self._manager)

  def _checkpoint_iterator(self, iterator):
    """Puts the input pipeline's position in the checkpoint, and restores it on resume.

    On one device the iterator is a `tf.data.Iterator`, whose state (shuffle
    buffers and seeds, positions) tf.train.Checkpoint saves. Attaching it
    restores the state the latest checkpoint holds (deferred restoration).
    Distributed iterators are not checkpointable (TF 2.21): with several
    replicas a resumed run restarts the pipeline from its beginning.
    """
    if not self.config.checkpoint_iterator or not isinstance(iterator, tf.data.Iterator):
      return
    try:
      self._checkpoint.train_iterator = iterator
    except (tf.errors.OpError, ValueError) as error:
      raise ValueError(
          f"Cannot resume the input pipeline from {self.latest_checkpoint}: the "
          f"training dataset differs from the checkpointed one ({str(error).splitlines()[0]}). "
          "Use the same pipeline, or Config(checkpoint_iterator=False) to restart the data "
          "from its beginning.") from None

  def _evaluate_and_keep_best(self, eval_dataset) -> dict:
    """Evaluates; with `config.best_metric`, exports the model if it is the best so far."""
    results = self.evaluate(eval_dataset)
    metric = self.config.best_metric
    if metric is None:
      return results
    if not self._is_chief:
      return results  # The chief exports.
    value, best = results[metric], self.best_export()
    lower = lower_is_better(metric, self.config.best_metric_goal)
    if best is not None and not (value < best["value"] if lower else value > best["value"]):
      return results
    root = tf.io.gfile.join(self.config.model_dir, "export", "best")
    record = {"metric": metric, "value": value, "step": self.step,
              "goal": "min" if lower else "max"}
    export_lib.export_saved_model(
        self.model, self._features_spec, tf.io.gfile.join(root, str(self.step)),
        extra_files={BEST_RECORD: json.dumps(record, indent=2) + "\n"})
    for version in tf.io.gfile.listdir(root):  # Keep the best only.
      version = version.rstrip("/")
      if version.isdigit() and int(version) != self.step:
        tf.io.gfile.rmtree(tf.io.gfile.join(root, version))
    logging.info("New best %s = %.6g at step %d: exported to %s/%d.", metric, value,
                 self.step, root, self.step)
    return results

  def best_export(self):
    """The record {"metric", "value", "step", "goal"} of the best export so far, or None."""
    root = tf.io.gfile.join(self.config.model_dir, "export", "best")
    if not tf.io.gfile.isdir(root):
      return None
    versions = sorted(int(v.rstrip("/")) for v in tf.io.gfile.listdir(root)
                      if v.rstrip("/").isdigit())
    for version in reversed(versions):
      path = tf.io.gfile.join(root, str(version), BEST_RECORD)
      if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as handle:
          return json.load(handle)
    return None

  def _train_one_loop(self, iterator, steps, eval_dataset) -> dict:
    """One compiled loop, then its summaries, progress line, checkpoint and evaluation.

    Returns the loop's training results.
    """
    num_steps = self._loop_length(self.step, steps)
    self._reset_metrics()
    counts_before = self.nonfinite_losses.numpy(), int(self.skipped_steps.numpy())
    self._maybe_start_profiler()
    start = time.perf_counter()
    diagnosed = False
    try:
      if self._balancing.diagnostics:
        done = self._run_loop(self._train_loop, iterator, num_steps - 1) if num_steps > 1 else 0
        if done == num_steps - 1:
          done += self._run_loop(self._diagnostic_loop, iterator, 1)
          diagnosed = done == num_steps
      else:
        done = self._run_loop(self._train_loop, iterator, num_steps)
    except BaseException as error:
      self._stop_profiler()
      if isinstance(error, ValueError):
        self._save()  # Keep the steps before the bad batch.
      raise
    seconds = time.perf_counter() - start
    if self.config.profile_steps and self.step >= self.config.profile_steps[1]:
      self._stop_profiler()
    results = self._results()
    steps_per_second = done / seconds
    scalars = {**results,
               "learning_rate": float(tf.convert_to_tensor(self.optimizer.learning_rate)),
               "gradient_norm": float(self._gradient_norm.result()),
               "steps_per_second": steps_per_second,
               "examples_per_second": float(self._examples.result()) / seconds}
    scalars["skipped_steps"] = float(self.skipped_steps.numpy())
    scalars.update(self._balancing.summaries(self.step, diagnosed))
    for head, count in zip(self.heads, self.nonfinite_losses.numpy()):
      scalars[f"{head.name}/nonfinite_steps"] = float(count)
    if self._loss_scaled:
      scalars["loss_scale"] = float(tf.convert_to_tensor(self.optimizer.dynamic_scale))
    self._summaries.write_scalars("train", scalars, self.step)
    logging.info(progress.train_line(self.step, steps, results, self.model.head_names,
                                     steps_per_second))
    if done < num_steps and self.config.nonfinite == "raise":
      self._raise_if_nonfinite(counts_before)
    if done < num_steps:
      self._save()
      raise ValueError(
          f"The training dataset ended at global step {self.step}, before "
          f"reaching steps={steps}: repeat it (dataset.repeat()). The steps "
          "trained so far were saved.")
    if self.step % self.config.checkpoint_every == 0 or self.step == steps:
      self._save()
    if (eval_dataset is not None and self.config.eval_every
        and self.step % self.config.eval_every == 0 and self.step < steps):
      self._evaluate_and_keep_best(eval_dataset)
    return results

  def evaluate(self, dataset: tf.data.Dataset, steps=None) -> dict:
    """Evaluates on `steps` batches (default `config.eval_steps`, else all).

    Returns a flat dict: "loss" (the weighted total), "<head>/loss",
    "<head>/weighted_loss" and "<head>/<metric>", each computed from sums
    over every evaluated example (and replica), not as a mean of batch means.
    """
    steps = self.config.eval_steps if steps is None else steps
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
      raise ValueError(f"evaluate steps must be an integer >= 1 or None; received {steps!r}.")
    features_spec, _, _ = validation.check_element_spec(dataset.element_spec, self.heads)
    self.build(features_spec)
    self._check_heads_get_logits(dataset)
    self._reset_metrics()
    iterator = iter(self.strategy.experimental_distribute_dataset(dataset))
    evaluated = 0
    while steps is None or evaluated < steps:
      num_steps = self.config.steps_per_loop
      if steps is not None:
        num_steps = min(num_steps, steps - evaluated)
      done = self._run_loop(self._eval_loop, iterator, num_steps)
      evaluated += done
      if done < num_steps:
        break
    if evaluated == 0:
      raise ValueError("The evaluation dataset is empty: it produced no batch.")
    results = self._results()
    self._summaries.write_scalars("eval", results, self.step)
    with self._summaries.as_default("eval", self.step):
      self._pictures.write()
    logging.info(progress.eval_line(self.step, results))
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
    loads. The write is atomic: a crash leaves any earlier export intact.
    """
    if self._features_spec is None:
      raise ValueError(
          "Nothing to export yet: the model has no variables. Call train, evaluate or "
          "predict first, or build(features_spec) to restore the latest checkpoint.")
    if path is None:
      path = tf.io.gfile.join(self.config.model_dir, "export", str(self.step))
    export_lib.export_saved_model(self.model, self._features_spec, path)
    logging.info("Exported the model at step %d to %s.", self.step, path)
    return path

  def restore(self, checkpoint_path: str):
    """Restores one given checkpoint (e.g. to evaluate it); call after `build`."""
    if self._features_spec is None:
      raise ValueError("restore needs the model's variables: call build(features_spec) first.")
    try:
      self._checkpoint.restore(checkpoint_path).assert_existing_objects_matched().expect_partial()
    except (tf.errors.OpError, IndexError) as error:
      raise ValueError(f"Cannot read the checkpoint {checkpoint_path}: "
                       f"{str(error).splitlines()[0]}") from None
    except (ValueError, AssertionError) as error:
      raise ValueError(f"Cannot restore the checkpoint {checkpoint_path} into this model: "
                       f"{error} Was it written for other heads or shapes?") from None

  # --- compiled functions ----------------------------------------------------

  def _train_loop_fn(self, iterator, num_steps, diagnostics=False):
    self.trace_counts["diagnostic_loop" if diagnostics else "train_loop"] += 1
    done = tf.constant(0)
    for _ in tf.range(num_steps):
      element = iterator.get_next_as_optional()
      if not element.has_value():
        break
      healthy = self.strategy.experimental_local_results(
          self.strategy.run(self._replica_train_step,
                            args=(element.get_value(), diagnostics)))[0]
      if self.config.nonfinite == "raise" and not healthy:
        break  # The host raises, naming the heads; the bad step is not counted.
      with tf.control_dependencies([healthy]):  # After the step's update.
        self.global_step.assign_add(1)
      done += 1
    return done

  def _eval_loop_fn(self, iterator, num_steps):
    self.trace_counts["eval_loop"] += 1
    done = tf.constant(0)
    for _ in tf.range(num_steps):
      element = iterator.get_next_as_optional()
      if not element.has_value():
        break
      self.strategy.run(lambda element: self._eval_step(self._checked_batch(element)),
                        args=(element.get_value(),))
      done += 1
    return done

  def _replica_train_step(self, element, diagnostics):
    step = self._diagnostic_step if diagnostics else self._train_step
    return step(self._checked_batch(element))

  def _checked_batch(self, element):
    """(features, labels[, weights]) -> (features, labels, weights), labels and features checked.

    Runs outside XLA so the assertions are real; the identity makes the step
    depend on them.
    """
    features, labels = element[:2]
    weights = element[2] if len(element) == 3 else {}
    with tf.control_dependencies(validation.assert_label_values(self.heads, labels, weights)
                                 + validation.assert_finite_features(features)):
      return tf.nest.map_structure(tf.identity, (features, labels, weights))

  def _train_step_fn(self, batch, diagnostics=False):
    self.trace_counts["diagnostic_step" if diagnostics else "train_step"] += 1
    _, labels, weights = batch
    weight_sums = update_lib.all_reduce_sum(
        step_lib.local_weight_sums(self.heads, labels, weights), self._replicas)
    loss_scale = self._update.loss_scale()
    step = tf.convert_to_tensor(self.global_step)
    indices = self._balancing.per_head_indices(diagnostics)
    non_trainable = [v.value for v in self.model.non_trainable_variables]
    gradients, new_non_trainable, _, terms, logits, head_gradients = self._gradients(
        [v.value for v in self.model.trainable_variables], non_trainable, batch, weight_sums,
        loss_scale, step, indices)
    update_lib.assign_changed(self.model.non_trainable_variables, non_trainable,
                              new_non_trainable, self._replicas)
    gradients, last_layer_norms = self._balancing.combine(
        gradients, head_gradients, indices, loss_scale, step, diagnostics)
    healthy = self._update.apply(gradients, loss_scale,
                                 [terms[head.name][0] for head in self.heads])
    if self._balancing.weightings_update:
      loss_sums = update_lib.all_reduce_sum(
          {name: head_terms[0] for name, head_terms in terms.items()}, self._replicas)
      losses = {name: tf.math.divide_no_nan(loss_sums[name], weight_sums[name])
                for name in loss_sums}
      self._balancing.update_weightings(losses, last_layer_norms, step, healthy)
    self._update_metrics(terms, labels, logits, weights)
    return healthy

  def _gradients_fn(self, trainable, non_trainable, batch, weight_sums, loss_scale, step,
                    per_head_indices):
    self.trace_counts["diagnostic_gradients" if per_head_indices else "gradients"] += 1
    return step_lib.gradients(self.model, self.heads, trainable, non_trainable, batch,
                              weight_sums, loss_scale, step, self.config.accumulation_steps,
                              self._replicas, per_head_indices)

  def _eval_step_fn(self, batch):
    self.trace_counts["eval_step"] += 1
    features, labels, weights = batch
    logits = self._forward([v.value for v in self.model.trainable_variables],
                           [v.value for v in self.model.non_trainable_variables], features)
    self._update_metrics(step_lib.loss_terms(self.heads, labels, logits, weights), labels,
                         logits, weights)
    self._pictures.update(labels, logits, weights)

  def _forward_fn(self, trainable, non_trainable, features):
    return step_lib.forward(self.model, trainable, non_trainable, features)

  def _predict_fn(self, features):
    self.trace_counts["predict"] += 1
    logits = self.model(features, training=False)
    return {head.name: head.predict(logits[head.name]) for head in self.heads}

  def _update_metrics(self, terms, labels, logits, weights):
    for head in self.heads:
      loss_sum, weight_sum, metric_terms = terms[head.name]
      # Mean with weight w of the value s/w accumulates exactly s and w.
      self._head_losses[head.name].update_state(
          tf.math.divide_no_nan(loss_sum, weight_sum), sample_weight=weight_sum)
      head.update_metrics(labels[head.name], logits[head.name], weights.get(head.name),
                          metric_terms)
    first_label = labels[self.heads[0].name]
    self._examples.update_state(tf.cast(tf.shape(first_label)[0], tf.float32))

  # --- host-side helpers -----------------------------------------------------

  def _strategy(self):
    """The strategy of the current scope, else the one the config names."""
    if tf.distribute.has_strategy():
      return tf.distribute.get_strategy()
    strategy = distribution.create_strategy(self.config.strategy, self.config.tpu,
                                            self.config.num_cpu_devices)
    if strategy.num_replicas_in_sync == 1:
      # Objects made outside any scope belong to the default strategy, which
      # places work on the first GPU if there is one.
      return tf.distribute.get_strategy()
    raise ValueError(
        f"strategy={self.config.strategy!r} runs {strategy.num_replicas_in_sync} replicas: "
        "create the trunk, heads, optimizer and Trainer inside its scope, "
        "`with engine.create_strategy(config).scope(): ...`, so that their variables "
        "are mirrored.")

  def _check_created_in_scope(self):
    if self._replicas == 1:
      return
    optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
    if getattr(optimizer, "_distribution_strategy", self.strategy) is not self.strategy:
      raise ValueError("The optimizer was created outside the strategy's scope; create it "
                       "inside `with strategy.scope():`, with the trunk and heads.")
    for head in self.heads:
      for metric in head.metrics:
        if metric.variables and not isinstance(metric.variables[0].value,
                                                tf.distribute.DistributedValues):
          raise ValueError(f"Head '{head.name}' was created outside the strategy's scope; "
                           "create it inside `with strategy.scope():`.")

  def _check_batch_divides(self, features_spec):
    batch = tf.nest.flatten(features_spec)[0].shape[0]
    parts = self._replicas * self.config.accumulation_steps
    if batch is not None and batch % parts:
      raise ValueError(
          f"The global batch size ({batch}) must divide into {self._replicas} replica(s) x "
          f"accumulation_steps={self.config.accumulation_steps} equal micro-batches; "
          f"use a multiple of {parts}.")
    if batch is None and parts > 1:
      raise ValueError(
          f"With {self._replicas} replica(s) and accumulation_steps="
          f"{self.config.accumulation_steps}, batches need a static size: batch the "
          "dataset with drop_remainder=True.")

  def _loop_length(self, step, steps):
    """Steps in the next loop: stop at the end, at checkpoint and eval steps, and
    where profiling starts and ends."""
    boundaries = [steps, step + self.config.steps_per_loop,
                  _next_multiple(step, self.config.checkpoint_every)]
    if self.config.eval_every:
      boundaries.append(_next_multiple(step, self.config.eval_every))
    if self.config.profile_steps:
      boundaries.extend(b for b in self.config.profile_steps if b > step)
    return min(boundaries) - step

  def _maybe_start_profiler(self):
    """Starts TensorFlow's profiler when the loop about to run is the first profiled one."""
    if not self.config.profile_steps or self._profiling:
      return
    start, end = self.config.profile_steps
    if start <= self.step < end:
      tf.profiler.experimental.start(self.config.model_dir)
      self._profiling = True
      logging.info("Profiling steps %d to %d into %s/plugins/profile.", self.step + 1, end,
                   self.config.model_dir)

  def _stop_profiler(self):
    if self._profiling:
      tf.profiler.experimental.stop()
      self._profiling = False

  def _run_loop(self, loop, iterator, num_steps) -> int:
    try:
      return int(loop(iterator, tf.constant(num_steps, tf.int32)))
    except tf.errors.InvalidArgumentError as error:
      translated = validation.as_value_error(error)
      if translated is None:
        raise
      raise translated from None

  @contextlib.contextmanager
  def _sigterm_flag(self):
    """A list that becomes truthy when SIGTERM arrives, for the duration of `train`.

    Schedulers send SIGTERM before killing a job. The flag is checked between
    loops, so the loop in flight finishes and nothing trained is lost. Signal
    handlers can only be set from the main thread; elsewhere this is inert.
    """
    flag = []
    if (threading.current_thread() is not threading.main_thread()
        or self._preemption is not None):  # The cluster's handler owns SIGTERM.
      yield flag
      return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.append(signum))
    try:
      yield flag
    finally:
      signal.signal(signal.SIGTERM, previous)

  def _raise_if_nonfinite(self, counts_before):
    """After a loop stopped early: raises if it stopped on a non-finite step."""
    head_counts, skipped = counts_before
    bad = [head.name for head, before, after in
           zip(self.heads, head_counts, self.nonfinite_losses.numpy()) if after > before]
    if not bad and int(self.skipped_steps.numpy()) == skipped:
      return  # The data ended instead.
    self._save()  # The steps before; the bad one was not applied.
    what = (f"the loss of head(s) {bad}" if bad
            else "the gradients (every head's loss was finite)")
    raise ValueError(
        f"At step {self.step + 1}, {what} became NaN or infinite. The step was not "
        f"applied and training stopped at step {self.step} (saved). Look at that "
        "batch, or lower the learning rate; --nonfinite=skip skips such steps instead.")

  def _save(self):
    """Saves a checkpoint at the current step unless one exists for it."""
    latest = self._manager.latest_checkpoint
    if self.step == 0 or (latest is not None and latest.endswith(f"-{self.step}")):
      return
    self.save_checkpoint()

  def save_checkpoint(self) -> str:
    """Writes a checkpoint of the current step (replacing one of the same step,
    e.g. after calibration) and returns its path.

    Never writes non-finite weights: a resumed run would only fail again.
    """
    broken = [v.path for v in self.model.trainable_variables
              if not tf.reduce_all(tf.math.is_finite(v.value)).numpy()]
    if broken:
      raise ValueError(f"Not writing a checkpoint at step {self.step}: these weights are NaN "
                       f"or infinite: {broken}. The previous checkpoint is "
                       f"{self._manager.latest_checkpoint}.")
    return self._manager.save(checkpoint_number=self.step)

  @property
  def metric_names(self) -> list:
    """The keys of `evaluate`'s results: "loss", "<head>/loss", "<head>/<metric>", ..."""
    return sorted(self._results())

  @property
  def latest_checkpoint(self):
    """Path of the newest checkpoint in model_dir, or None."""
    return self._read_manager.latest_checkpoint

  def _reset_metrics(self):
    self._reset_metrics_function()

  def _reset_metrics_fn(self):
    for metric in [*self._head_losses.values(), self._gradient_norm, self._examples,
                   *self._pictures.metrics]:
      metric.reset_state()
    for head in self.heads:
      for metric in head.metrics:
        metric.reset_state()

  def _results(self) -> dict:
    return {name: float(value) for name, value in self._result_tensors().items()}

  def _result_tensors_fn(self) -> dict:
    results = {"loss": tf.constant(0.0)}
    for head in self.heads:
      loss = self._head_losses[head.name].result()
      weight = tf.cast(head.weighting.weight(head.name, self.global_step), tf.float32)
      results[f"{head.name}/loss"] = loss
      results[f"{head.name}/weighted_loss"] = weight * loss
      results["loss"] += weight * loss + head.weighting.regulariser(head.name)
      for name, value in head.metric_results().items():
        results[f"{head.name}/{name}"] = tf.cast(value, tf.float32)
    return results

  def _check_heads_get_logits(self, dataset):
    """Runs each distribution head's double-softmax guard once, on one real batch.

    A trunk ending in a softmax, or logits that are already probabilities,
    train badly without any error; the heads warn or raise (their
    `double_softmax` policy) before the first step.
    """
    if self._inputs_checked:
      return
    self._inputs_checked = True
    guarded = [head for head in self.heads if isinstance(head, heads_lib.DistributionHead)
               and head.double_softmax != "ignore"]
    if not guarded:
      return
    for element in dataset.take(1):
      shared = self.model.trunk(element[0], training=False)
      for head in guarded:
        inputs = self.model.select(shared, head)
        head.check_inputs(inputs, head(inputs, training=False))

  def _track_hidden_variables(self):
    """Adds to the checkpoint, by position, model variables it would not reach.

    Keras 3 hides from tf.train.Checkpoint the variables of objects held in
    list or dict attributes of a custom layer, and the state of every
    `keras.random.SeedGenerator` (e.g. Dropout's): a resumed run would lose
    them silently. They are saved as the list `model_state`, in the model's
    variable order, so the same architecture restores them.
    """
    reachable = {id(obj) for obj in tf.train.TrackableView(self._checkpoint).descendants()}
    hidden = [variable for variable in self.model.variables if id(variable) not in reachable]
    if hidden:
      logging.info("Checkpointing by position the variables tf.train.Checkpoint would not "
                   "reach: %s", [variable.path for variable in hidden])
      self._checkpoint.model_state = hidden


def _check_writable(model_dir):
  """Fails at construction, not at the first summary or checkpoint, if model_dir is unusable."""
  try:
    tf.io.gfile.makedirs(model_dir)
    # Per process: workers of one job share model_dir.
    probe = tf.io.gfile.join(model_dir, f".write-test-{socket.gethostname()}-{os.getpid()}")
    with tf.io.gfile.GFile(probe, "w") as handle:
      handle.write("ok")
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as error:
    raise ValueError(f"model_dir {model_dir!r} is not a writable directory: "
                     f"{str(error).splitlines()[0]}") from None


def _next_multiple(step, every):
  return (step // every + 1) * every
