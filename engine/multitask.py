"""How the heads' losses and gradients are balanced inside a training step.

Per-head gradients on the shared trunk cost one extra backward pass per
head, so they are computed only when something needs them:

- GradNorm (a head weighting) needs each head's gradient on the last shared
  trunk layer, at every step;
- an aggregation (`Config.aggregation`: PCGrad, MGDA, UPGrad, ...; see
  `engine.aggregation`) replaces the trunk's gradient by its combination of
  the heads' gradients, at every step (after unscaling: the loss scale
  comes off before and goes back on after, so mixed_float16 changes
  nothing; a non-finite head gradient makes the result NaN, so an overflow
  is still skipped);
- the conflict diagnostics (each head's gradient norm on the trunk and the
  pairwise cosines, `Config.head_diagnostics`) are computed on the step at
  every multiple of `Config.diagnostics_every` only (a loop ends there), by
  a second program that compiles when first used: from the Trainer's second
  loop on, so the first loop compiles one program only. (A conditional inside one
  XLA program was tried: on CPU it made every step 2.5x slower.)

Per-head gradients are all-reduced before any norm or projection, so every
replica decides on the gradients of the global batch.
"""

import tensorflow as tf

from engine import aggregation as aggregation_lib
from engine import update as update_lib


class HeadBalancing:
  """Weighting updates, gradient aggregation and diagnostics for one model's heads.

  Create under the strategy's scope (it owns the diagnostics variables);
  call `configure` once the model's variables exist.
  """

  def __init__(self, heads, aggregation: str, aggregation_options: dict, diagnostics: bool,
               replicas: int):
    self.heads = list(heads)
    self.aggregation = aggregation
    self.aggregation_options = dict(aggregation_options)
    self.aggregating = aggregation != "sum"
    self.diagnostics = diagnostics and len(self.heads) > 1
    self.replicas = replicas
    self.weightings = list({id(head.weighting): head.weighting for head in self.heads}.values())
    self.needs_last_layer = any(w.needs_head_gradients for w in self.weightings)
    self.weightings_update = any(w.stateful for w in self.weightings)
    count = len(self.heads)
    aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self.gradient_norms = tf.Variable(tf.zeros([count]), trainable=False,
                                      name="head_gradient_norms", aggregation=aggregation)
    self.gradient_cosines = tf.Variable(tf.zeros([count, count]), trainable=False,
                                        name="head_gradient_cosines", aggregation=aggregation)
    self.has_coefficients = self.aggregating and self.aggregation != "pcgrad"
    self.coefficients = tf.Variable(tf.zeros([count]), trainable=False,
                                    name="aggregation_coefficients", aggregation=aggregation)
    self._trunk_indices = ()
    self._last_layer_index = None

  def configure(self, model):
    """Finds the shared trunk's variables among the model's trainable ones."""
    trunk = {id(v) for v in model.trunk.trainable_variables}
    self._trunk_indices = tuple(i for i, v in enumerate(model.trainable_variables)
                                if id(v) in trunk)
    kernels = [i for i in self._trunk_indices if len(model.trainable_variables[i].shape) >= 2]
    if (self.aggregating or self.needs_last_layer) and not kernels:
      raise ValueError("GradNorm and gradient aggregation act on the shared trunk's "
                       "gradients, but the trunk has no trainable weight matrix.")
    self._last_layer_index = kernels[-1] if kernels else None

  def per_head_indices(self, diagnostics: bool) -> tuple:
    """The trainable values each head's gradient is needed on, in this kind of step."""
    if self.aggregating or (diagnostics and self.diagnostics):
      return self._trunk_indices
    if self.needs_last_layer:
      return (self._last_layer_index,)
    return ()

  def combine(self, grads, head_grads, indices, loss_scale, step, diagnostics):
    """All-reduces the per-head gradients, aggregates them and records diagnostics.

    Returns (gradients to apply, {head: weighted gradient norm on the last
    shared layer}); the first are this replica's share, as the optimizer
    all-reduces them.
    """
    if not indices:
      return grads, {}
    names = [head.name for head in self.heads]
    reduced = update_lib.all_reduce_sum({name: head_grads[name] for name in names},
                                        self.replicas)
    last_norms = {}
    if self.needs_last_layer:
      position = indices.index(self._last_layer_index)
      last_norms = {name: tf.norm(reduced[name][position]) / loss_scale for name in names}
    if self.aggregating or (diagnostics and self.diagnostics):
      flat = tf.stack([tf.concat([tf.reshape(g, [-1]) for g in reduced[name]], 0)
                       for name in names])  # [heads, trunk parameters]
      if diagnostics and self.diagnostics:
        self._record_diagnostics(flat / loss_scale)
      if self.aggregating:
        combined = self._aggregate(flat / loss_scale, step) * loss_scale / self.replicas
        grads = list(grads)
        offset = 0
        for index in indices:
          size = tf.size(grads[index])
          grads[index] = tf.reshape(combined[offset:offset + size], tf.shape(grads[index]))
          offset += size
    return grads, last_norms

  def _aggregate(self, flat, step):
    """The aggregation's direction for unscaled [heads, n] gradients; NaN unless all are
    finite (so that a loss-scale overflow is seen and the step skipped)."""
    options = dict(self.aggregation_options)
    if self.aggregation == "pcgrad":
      options["seed"] = step
    if self.has_coefficients:
      direction, coefficients = aggregation_lib.aggregate_with_weights(
          self.aggregation, flat, **options)
      self.coefficients.assign(coefficients)
    else:
      direction = aggregation_lib.aggregate(self.aggregation, flat, **options)
    finite = tf.reduce_all(tf.math.is_finite(flat))
    return tf.where(finite, direction, tf.fill(tf.shape(direction), float("nan")))

  def _record_diagnostics(self, flat):
    norms = tf.norm(flat, axis=1)
    unit = tf.math.divide_no_nan(flat, norms[:, tf.newaxis])
    self.gradient_norms.assign(norms)
    self.gradient_cosines.assign(tf.matmul(unit, unit, transpose_b=True))

  def update_weightings(self, global_losses, last_norms, step, healthy):
    """Applies each weighting's state update, unless the step was not applied."""
    for weighting in self.weightings:
      for variable, value in weighting.updates(global_losses, last_norms, step):
        variable.assign(tf.where(healthy, value, tf.convert_to_tensor(variable)))

  def summaries(self, step) -> dict:
    """Scalars as tensors (read between loops): effective weights, learned values,
    and the diagnostics of the loop's last step ("diagnostics/..." keys)."""
    scalars = {}
    for head in self.heads:
      scalars[f"{head.name}/loss_weight"] = tf.cast(head.weighting.weight(head.name, step),
                                                    tf.float32)
      for key, value in head.weighting.summaries(head.name).items():
        scalars[f"{head.name}/{key}"] = tf.cast(value, tf.float32)
    if self.has_coefficients:  # The last step's: each head's weight in the trunk's update.
      coefficients = tf.convert_to_tensor(self.coefficients)
      for i, head in enumerate(self.heads):
        scalars[f"{head.name}/aggregation_weight"] = coefficients[i]
    if self.diagnostics:
      norms = tf.convert_to_tensor(self.gradient_norms)
      cosines = tf.convert_to_tensor(self.gradient_cosines)
      for i, head in enumerate(self.heads):
        scalars[f"diagnostics/{head.name}/trunk_gradient_norm"] = norms[i]
        for j in range(i + 1, len(self.heads)):
          scalars[f"diagnostics/gradient_cosine/{head.name}_vs_{self.heads[j].name}"] = (
              cosines[i, j])
    return scalars
