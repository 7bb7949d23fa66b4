"""Applying one replica's gradients under any strategy, exactly.

The global norm, finiteness and clipping are decided on the all-reduced
gradients, identical on every replica. Keras 3 cannot do this itself: its
LossScaleOptimizer decides "finite" from the first replica's local gradients
only, and `global_clipnorm` clips each replica's local gradients before they
are summed. Each replica then hands the optimizer its local gradients times
the common factor (unscaling, clipping); the optimizer's own SUM all-reduce
gives exactly that factor times the reduced gradient.
"""

import typing

import keras
import tensorflow as tf

from engine import gated_writes
from heads import sums as sums_lib


def all_reduce_sum(values, replicas):
  """SUM over replicas (inside a replica function); the values themselves on one."""
  if replicas == 1:
    return values
  return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)


def assign_changed(variables, old_values, new_values, replicas, applied):
  """Writes back non-trainable state a step changed (BatchNorm statistics, RNG state).

  Values the step left alone come back from the stateless scope as the same
  tensors and are skipped. Where `applied` (a bool) is False the old values
  stay. With several replicas, float state is averaged over replicas and
  written to every copy.
  """
  changed = [(variable, tf.where(applied, new, old))
             for variable, old, new in zip(variables, old_values, new_values) if new is not old]
  if not changed:
    return
  if replicas == 1:
    for variable, value in changed:
      variable.assign(value)
    return
  context = tf.distribute.get_replica_context()
  values = [context.all_reduce(tf.distribute.ReduceOp.MEAN, value)
            if value.dtype.is_floating else value for _, value in changed]
  def assign(strategy, values):
    for (variable, _), value in zip(changed, values):
      strategy.extended.update(variable.value, lambda v, x: v.assign(x), args=(value,))
  context.merge_call(assign, args=(values,))


SMALL = 1 << 14  # Gradients of at most this many values share one sum.


def finiteness_sum(gradients):
  """A float32 sum that is NaN or infinite iff some gradient value is.

  XLA's CPU backend compiles each reduction as one or two kernels of its
  own, ~20 ms of compile time each whatever their size (BENCHMARKS.md). The
  small gradients (biases, heads) are therefore summed together, as one
  product of their concatenation with ones (`heads.sums`: one kernel, where
  a reduction of it compiled as three). The large ones keep a sum each,
  where copying them would cost a pass.
  """
  values = [tf.cast(g.values if isinstance(g, tf.IndexedSlices) else g, tf.float32)
            for g in gradients]
  small = [tf.reshape(v, [-1]) for v in values
           if v.shape.is_fully_defined() and v.shape.num_elements() <= SMALL]
  sums = [tf.reduce_sum(v) for v in values
          if not (v.shape.is_fully_defined() and v.shape.num_elements() <= SMALL)]
  if small:
    sums.append(sums_lib.total(tf.concat(small, axis=0)))
  return tf.add_n(sums)


class Outcome(typing.NamedTuple):
  """What `GradientUpdate.apply` decided, identical on every replica."""
  applied: tf.Tensor        # the optimizer applied the step
  finite: tf.Tensor         # every head's loss and the reduced gradients are finite
  losses_finite: tf.Tensor  # every head's loss (on every replica) is finite
  bad_heads: tf.Tensor      # [heads] bool: that head's loss is not finite
  norm: typing.Optional[tf.Tensor]  # the global norm of the reduced, unscaled gradients,
                                    # if it was computed (`apply`'s measure_norm)


class GradientUpdate:
  """Unscales, checks, clips and applies gradients; keeps the loss-scale rule.

  Args:
    optimizer: a Keras optimizer, or a LossScaleOptimizer (mixed_float16),
      whose `dynamic_scale` and `step_counter` it drives.
    variables: the model's trainable variables, in gradient order.
    replicas: the strategy's number of replicas in sync.
    clip_norm: clip to this global norm, or None.
    skipped_steps: an int64 variable counting steps not applied (non-finite).
    nonfinite_losses: an int64 variable [heads] counting, per head, the steps
      whose loss was not finite.
    consecutive_skips: an int64 variable counting the steps not applied since
      the last applied one.
  """

  def __init__(self, optimizer, variables, replicas, clip_norm, skipped_steps,
               nonfinite_losses, consecutive_skips):
    self._optimizer = optimizer
    self._loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # The optimizer that applies: the engine keeps the loss-scale rule itself.
    self._inner = optimizer.inner_optimizer if self._loss_scaled else optimizer
    self._variables = variables
    self._replicas = replicas
    self._clip_norm = clip_norm
    self._skipped_steps = skipped_steps
    self._nonfinite_losses = nonfinite_losses
    self.consecutive_skips = consecutive_skips

  @property
  def loss_scaled(self) -> bool:
    return self._loss_scaled

  def loss_scale(self):
    """The factor the loss is multiplied by before differentiation."""
    if self._loss_scaled:
      return tf.cast(self._optimizer.dynamic_scale, tf.float32)
    return tf.constant(1.0)

  def apply(self, gradients, loss_scale, head_losses, allowed, measure_norm=True) -> Outcome:
    """Applies this replica's (scaled, local) gradients of its share of the loss.

    `head_losses` are this replica's per-head loss sums; `allowed` (a bool,
    the same on every replica) is False once the loop has stopped or when
    the batch failed its checks. A step is applied only if it is allowed and
    every head's loss (on every replica) and the reduced gradients are
    finite; otherwise the weights and the optimizer's state stay untouched.
    An allowed step that is not finite is counted (`skipped_steps`, per head
    `nonfinite_losses`) and, under loss scaling, halves the scale. Nothing
    here branches: the update is gated by selects, on one replica inside the
    step's XLA program, with several in the cross-replica context.

    The global norm is computed where it is used: with `clip_norm`, or when
    `measure_norm` (the diagnostic steps, `train_metrics="full"`); `norm` is
    None otherwise. Finiteness alone takes one plain sum per gradient: a
    NaN or infinity anywhere makes the sum non-finite, and XLA's CPU backend
    runs the norm's squares as a pass of their own (on the large benchmark
    model the norm was ~7% of a step).
    """
    bad_heads = all_reduce_sum(
        tf.cast(tf.logical_not(tf.math.is_finite(tf.stack(head_losses))), tf.float32),
        self._replicas) > 0
    reduced = all_reduce_sum(gradients, self._replicas)
    losses_finite = tf.logical_not(tf.reduce_any(bad_heads))
    norm = None
    if measure_norm or self._clip_norm:
      norm = tf.linalg.global_norm(reduced) / loss_scale
      gradients_finite = tf.math.is_finite(norm)
    else:
      gradients_finite = tf.math.is_finite(finiteness_sum(reduced))
    finite = tf.logical_and(gradients_finite, losses_finite)
    local = gradients
    if self._loss_scaled or self._clip_norm:
      factor = 1.0 / loss_scale
      if self._clip_norm:
        factor *= tf.minimum(1.0, self._clip_norm / tf.where(finite, norm, 1.0))
      local = [g * tf.cast(factor, g.dtype) for g in gradients]
    applied = tf.logical_and(allowed, finite)
    rejected = tf.logical_and(allowed, tf.logical_not(finite))
    if self._replicas == 1:
      self._apply_or_skip(local, applied, rejected, bad_heads)
    else:
      tf.distribute.get_replica_context().merge_call(
          self._apply_cross_replica, args=(local, applied, rejected, bad_heads))
    return Outcome(applied, finite, losses_finite, bad_heads, norm)

  def _apply_cross_replica(self, strategy, local, applied, rejected, bad_heads):
    """Several replicas: each applies its share, then every copy of every variable
    keeps its old value where the step is not applied (a select per device, no
    conditional: on GPUs a conditional's predicate would be read by the host)."""
    # All were reduced, so every replica holds the same values.
    first = lambda value: strategy.experimental_local_results(value)[0]
    applied, rejected, bad_heads = first(applied), first(rejected), first(bad_heads)
    copies = [copy for variable in self._state()
              for copy in strategy.experimental_local_results(variable.value)]
    old = []
    for copy in copies:
      with tf.device(copy.device):
        old.append(tf.identity(copy))
    strategy.extended.call_for_each_replica(self._inner_apply, args=(local,))
    for copy, value in zip(copies, old):
      with tf.device(copy.device):
        copy.assign(tf.where(applied, copy.read_value(), value))
    self._count(applied, rejected, bad_heads)

  def _state(self):
    """The variables an update writes: the weights and the optimizer's own."""
    return [*self._variables, *self._inner.variables]

  def _apply_or_skip(self, local, applied, rejected, bad_heads):
    """One replica: the optimizer's writes keep the old values where the step
    is not applied, in the same pass (`engine.gated_writes`; a conditional
    inside XLA would copy every weight and slot in and out of it)."""
    gated_writes.apply(self._inner, lambda: self._inner_apply(local), self._state(), applied)
    self._count(applied, rejected, bad_heads)

  def _inner_apply(self, gradients):
    self._inner.apply(gradients, self._variables)

  def _count(self, applied, rejected, bad_heads):
    """Counts a rejected step and moves the loss scale, without a branch."""
    self._skipped_steps.assign_add(tf.cast(rejected, tf.int64))
    self._nonfinite_losses.assign_add(tf.cast(bad_heads & rejected, tf.int64))
    streak = self.consecutive_skips
    streak.assign(tf.where(rejected, streak + 1, tf.where(applied, tf.zeros_like(streak), streak)))
    if not self._loss_scaled:
      return
    # LossScaleOptimizer's rule: halve on overflow; double after
    # `dynamic_growth_steps` applied steps in a row.
    optimizer = self._optimizer
    scale, counter = optimizer.dynamic_scale, optimizer.step_counter
    at_growth = applied & tf.equal(counter, optimizer.dynamic_growth_steps - 1)
    optimizer.dynamic_scale.assign(tf.where(rejected, scale * 0.5,
                                            tf.where(at_growth, scale * 2.0, scale)))
    optimizer.step_counter.assign(tf.where(rejected | at_growth, tf.zeros_like(counter),
                                           tf.where(applied, counter + 1, counter)))
