"""One replica's training and evaluation step: a batch in, measurements out.

The step reads like the math. For one training step:

1. the batch's values are checked (`validation.BatchChecks`: counts, not
   assertions, so they run inside XLA);
2. each head's loss-weight sum is all-reduced, so every replica divides by
   the weight sum of the global batch;
3. `engine.step.gradients` gives the gradients from variable values;
4. `engine.update` all-reduces them, checks finiteness, clips and applies,
   unless the loop has stopped, the batch failed its checks or the step is
   not finite;
5. the first reason to stop is recorded (`engine.halting`), the step's sums
   are added to the measurements, and the global step counts the step.

Nothing here asks the host anything: every decision is a tensor, so on one
replica the whole step is one XLA program, and the loop around it needs
nothing but the iterator and the loop counter.
"""

import tensorflow as tf

from engine import halting as halting_lib
from engine import step as step_lib
from engine import update as update_lib
from heads import guard as guard_lib


class ReplicaStep:
  """The step functions `engine.loop` runs once per replica and batch.

  Args:
    trainer_state: the Trainer, for its model, heads, optimizer update,
      balancing, measurements, halting record, batch checks, global step
      and config (read when traced).
    compile_gradients: XLA-compile `engine.step.gradients` on its own (the
      loop compiles the whole step instead when there is one replica).
  """

  def __init__(self, trainer_state, compile_gradients: bool):
    self._t = trainer_state
    jit = compile_gradients and trainer_state.config.jit_compile
    self._gradients = (tf.function(self._gradients_fn, jit_compile=True, autograph=False)
                       if jit else self._gradients_fn)
    self._forward = (tf.function(step_lib.forward, jit_compile=True, autograph=False)
                     if jit else step_lib.forward)
    self._raising = tf.constant([[isinstance(head, guard_lib.DistributionHead)
                                  and head.double_softmax == "raise"] * 2
                                 for head in trainer_state.heads])

  def train(self, element, diagnostics=False, present=None):
    """One training step on this replica's batch; `diagnostics`: also the per-head
    gradient diagnostics (the last step of a loop, in a program of its own).

    `present` (a bool tensor; None: True): False for a slot of a program of
    several steps that got no batch. Such a step applies, counts, measures
    and records nothing, as a step after the loop stopped.
    """
    t = self._t
    t.trace_counts["diagnostic_step" if diagnostics else "train_step"] += 1
    features, labels, weights = split(element)
    replicas = t.replicas
    checks = _reduced_checks(t, features, labels, weights)
    batch_ok = tf.equal(tf.reduce_sum(checks[:, 0]), 0.0)
    labels = _safe_labels(labels, batch_ok)
    running = t.halting.running()
    guard_now = t.halting.guard_pending()
    if present is not None:
      running &= present
      guard_now &= present
    weight_sums = update_lib.all_reduce_sum(
        step_lib.local_weight_sums(t.heads, labels, weights), replicas)
    loss_scale = t.update.loss_scale()
    step = tf.convert_to_tensor(t.global_step)
    indices = t.balancing.per_head_indices(diagnostics)
    model_variables = t.model.trainable_variables, t.model.non_trainable_variables
    trainable, non_trainable = ([v.value for v in vs] for vs in model_variables)
    out = self._gradients(trainable, non_trainable, (features, labels, weights), weight_sums,
                          loss_scale, step, tuple(indices))
    terms = out["terms"]
    probabilities = update_lib.all_reduce_sum(
        tf.cast(out["probabilities"], tf.float32), replicas) > 0
    guard_stop = guard_now & tf.reduce_any(probabilities & self._raising)
    allowed = running & batch_ok & tf.logical_not(guard_stop)
    gradients, last_norms = t.balancing.combine(out["gradients"], out["head_gradients"],
                                                indices, loss_scale, step, diagnostics)
    # The global gradient norm is measured on the diagnostic steps (every step
    # with the full training metrics): it is a pass over every gradient.
    outcome = t.update.apply(gradients, loss_scale,
                             [terms[head.name][0] for head in t.heads], allowed,
                             measure_norm=diagnostics or t.config.train_metrics == "full")
    update_lib.assign_changed(t.model.non_trainable_variables, non_trainable,
                              out["non_trainable"], replicas, outcome.applied)
    healthy = outcome.losses_finite if t.update.loss_scaled else outcome.finite
    fatal = allowed & tf.logical_not(healthy) & tf.constant(t.config.nonfinite == "raise")
    limit = t.config.max_consecutive_skips  # 0: no limit.
    streak_ended = (t.update.consecutive_skips >= limit) if limit else tf.constant(False)
    stop = running & (tf.logical_not(batch_ok) | guard_stop | fatal | streak_ended)
    reason = tf.where(tf.logical_not(batch_ok), halting_lib.BAD_BATCH,
                      tf.where(guard_stop, halting_lib.PROBABILITIES,
                               tf.where(fatal, tf.where(outcome.losses_finite,
                                                        halting_lib.NONFINITE_GRADIENTS,
                                                        halting_lib.NONFINITE_LOSS),
                                        halting_lib.TOO_MANY_SKIPS)))
    t.halting.record(stop, step + 1, reason, checks, outcome.bad_heads, guard_now, probabilities)
    counted = running & tf.logical_not(stop)
    if t.balancing.weightings_update:
      loss_sums = update_lib.all_reduce_sum(
          {name: head_terms[0] for name, head_terms in terms.items()}, replicas)
      losses = {name: tf.math.divide_no_nan(loss_sums[name], weight_sums[name])
                for name in loss_sums}
      t.balancing.update_weightings(losses, last_norms, step, outcome.applied)
    # A skipped step's NaN or infinite losses stay out of the reported means.
    measured = counted & outcome.losses_finite
    t.measurements.accumulate(terms, _batch_size(t, labels), measured, outcome.norm,
                              outcome.applied)
    if t.config.train_metrics == "full":
      t.measurements.update_metrics(labels, out["logits"], weights, terms, measured)
    t.global_step.assign_add(tf.cast(counted, tf.int64))

  def evaluate(self, element):
    """One evaluation step: every metric and picture; a bad batch is recorded."""
    t = self._t
    t.trace_counts["eval_step"] += 1
    features, labels, weights = split(element)
    checks = _reduced_checks(t, features, labels, weights)
    batch_ok = tf.equal(tf.reduce_sum(checks[:, 0]), 0.0)
    t.halting.record(tf.logical_not(batch_ok), tf.convert_to_tensor(t.global_step),
                     halting_lib.BAD_BATCH, checks, tf.zeros([len(t.heads)], tf.bool))
    labels = _safe_labels(labels, batch_ok)
    logits = self._forward(t.model, [v.value for v in t.model.trainable_variables],
                           [v.value for v in t.model.non_trainable_variables], features)
    terms = step_lib.loss_terms(t.heads, labels, logits, weights)
    t.measurements.accumulate(terms, _batch_size(t, labels))
    t.measurements.update_metrics(labels, logits, weights, terms)
    t.pictures.update(labels, logits, weights)

  def _gradients_fn(self, trainable, non_trainable, batch, weight_sums, loss_scale, step,
                    indices):
    t = self._t
    t.trace_counts["diagnostic_gradients" if indices else "gradients"] += 1
    return step_lib.gradients(t.model, t.heads, trainable, non_trainable, batch, weight_sums,
                              loss_scale, step, t.config.accumulation_steps, t.replicas,
                              indices)


def split(element):
  """(features, labels[, weights]) -> (features, labels, weights), weights {} if absent."""
  features, labels = element[:2]
  return features, labels, (element[2] if len(element) == 3 else {})


def _safe_labels(labels, batch_ok):
  """The labels, or zeros for a batch that failed its checks (it is never applied).

  Without XLA, TensorFlow's loss op raises on an out-of-range class id
  before the host could name the head; with XLA it gives NaN.
  """
  return {name: tf.where(batch_ok, y, tf.zeros_like(y)) for name, y in labels.items()}


def _reduced_checks(t, features, labels, weights):
  return t.checks.reduce_over_replicas(t.checks.compute(features, labels, weights), t.replicas)


def _batch_size(t, labels):
  return tf.shape(labels[t.heads[0].name])[0]
