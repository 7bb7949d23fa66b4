"""Applying one replica's gradients under any strategy, exactly.

The global norm, finiteness and clipping are decided on the all-reduced
gradients, identical on every replica. Keras 3 cannot do this itself: its
LossScaleOptimizer decides "finite" from the first replica's local gradients
only, and `global_clipnorm` clips each replica's local gradients before they
are summed. Each replica then hands the optimizer its local gradients times
the common factor (unscaling, clipping); the optimizer's own SUM all-reduce
gives exactly that factor times the reduced gradient.
"""

import keras
import tensorflow as tf


def all_reduce_sum(values, replicas):
  """SUM over replicas (inside a replica function); the values themselves on one."""
  if replicas == 1:
    return values
  return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)


def assign_changed(variables, old_values, new_values, replicas):
  """Writes back non-trainable state a step changed (BatchNorm statistics, RNG state).

  Values the step left alone come back from `stateless_call` as the same
  tensors and are skipped. With several replicas, float state is averaged
  over replicas and written to every copy.
  """
  changed = [(variable, new) for variable, old, new in zip(variables, old_values, new_values)
             if new is not old]
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


class GradientUpdate:
  """Unscales, checks, clips and applies gradients; keeps the loss-scale rule.

  Args:
    optimizer: a Keras optimizer, or a LossScaleOptimizer (mixed_float16),
      whose `dynamic_scale` and `step_counter` it drives.
    variables: the model's trainable variables, in gradient order.
    replicas: the strategy's number of replicas in sync.
    clip_norm: clip to this global norm, or None.
    skipped_steps: an int64 variable counting skipped steps.
    nonfinite_losses: an int64 variable [heads] counting, per head, the steps
      whose loss was not finite.
    gradient_norm: a Keras Mean metric of the (unscaled, reduced) norm.
  """

  def __init__(self, optimizer, variables, replicas, clip_norm, skipped_steps,
               nonfinite_losses, gradient_norm):
    self._optimizer = optimizer
    self._loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    self._variables = variables
    self._replicas = replicas
    self._clip_norm = clip_norm
    self._skipped_steps = skipped_steps
    self._nonfinite_losses = nonfinite_losses
    self._gradient_norm = gradient_norm

  def loss_scale(self):
    """The factor the loss is multiplied by before differentiation."""
    if self._loss_scaled:
      return tf.cast(self._optimizer.dynamic_scale, tf.float32)
    return tf.constant(1.0)

  def apply(self, gradients, loss_scale, head_losses):
    """Applies this replica's (scaled, local) gradients of its share of the loss.

    `head_losses` are this replica's per-head loss sums. A step is applied
    only if every head's loss (on every replica) and the reduced gradients
    are finite; otherwise the weights stay untouched and it is counted.
    Returns whether the step was healthy (the same on every replica): every
    head's loss finite, and the gradients finite unless loss scaling is on
    (an overflow there is routine: the step is skipped and the scale lowered).
    """
    bad_heads = all_reduce_sum(
        tf.cast(tf.logical_not(tf.math.is_finite(tf.stack(head_losses))), tf.float32),
        self._replicas) > 0
    reduced = all_reduce_sum(gradients, self._replicas)
    norm = tf.linalg.global_norm(reduced) / loss_scale
    losses_finite = tf.logical_not(tf.reduce_any(bad_heads))
    finite = tf.logical_and(tf.math.is_finite(norm), losses_finite)
    self._gradient_norm.update_state(tf.where(finite, norm, 0.0), tf.cast(finite, tf.float32))
    local = gradients
    if self._loss_scaled or self._clip_norm:
      factor = 1.0 / loss_scale
      if self._clip_norm:
        factor *= tf.minimum(1.0, self._clip_norm / tf.where(finite, norm, 1.0))
      local = [g * tf.cast(factor, g.dtype) for g in gradients]
    if self._replicas == 1:
      self._apply_or_skip(local, finite, bad_heads)
    else:
      tf.distribute.get_replica_context().merge_call(self._apply_cross_replica,
                                                     args=(local, finite, bad_heads))
    return losses_finite if self._loss_scaled else finite

  def _apply_cross_replica(self, strategy, local, finite, bad_heads):
    # Both are all-reduced, so every replica holds the same values.
    finite = strategy.experimental_local_results(finite)[0]
    bad_heads = strategy.experimental_local_results(bad_heads)[0]
    def apply():
      strategy.extended.call_for_each_replica(self._inner_apply, args=(local,))
      return tf.constant(True)
    tf.cond(finite, apply, lambda: self._on_non_finite(bad_heads))
    if self._loss_scaled:
      tf.cond(finite, self._grow_loss_scale, lambda: tf.constant(True))

  def _apply_or_skip(self, local, finite, bad_heads):
    def apply():
      self._inner_apply(local)
      return self._grow_loss_scale() if self._loss_scaled else tf.constant(True)
    tf.cond(finite, apply, lambda: self._on_non_finite(bad_heads))

  def _inner_apply(self, gradients):
    optimizer = self._optimizer.inner_optimizer if self._loss_scaled else self._optimizer
    optimizer.apply(gradients, self._variables)

  def _grow_loss_scale(self):
    """LossScaleOptimizer's rule: double the scale after `dynamic_growth_steps` finite steps."""
    optimizer = self._optimizer
    at_growth = tf.equal(optimizer.step_counter, optimizer.dynamic_growth_steps - 1)
    optimizer.dynamic_scale.assign(tf.where(at_growth, optimizer.dynamic_scale * 2.0,
                                            optimizer.dynamic_scale))
    optimizer.step_counter.assign(tf.where(at_growth, tf.zeros_like(optimizer.step_counter),
                                           optimizer.step_counter + 1))
    return tf.constant(True)

  def _on_non_finite(self, bad_heads):
    """A step whose losses or gradients are not finite: skipped, the loss scale halved."""
    self._nonfinite_losses.assign_add(tf.cast(bad_heads, tf.int64))
    if self._loss_scaled:
      self._optimizer.step_counter.assign(tf.zeros_like(self._optimizer.step_counter))
      self._optimizer.dynamic_scale.assign(self._optimizer.dynamic_scale * 0.5)
    self._skipped_steps.assign_add(1)
    return tf.constant(False)
