"""The math of one training step, as pure functions of tensors.

No variables are read or written here: the model runs through Keras's
`stateless_call` on variable values, so these functions compile with XLA
under any strategy (XLA cannot update a MirroredVariable from a replica, nor
all-reduce on CPU). The trainer reads the variables, all-reduces, and applies.
"""

import keras
import tensorflow as tf


def local_weight_sums(heads, labels, weights) -> dict:
  """Each head's sum of loss weights over this replica's batch."""
  return {head.name: tf.reduce_sum(head.loss_weights(
      tf.convert_to_tensor(labels[head.name]), weights.get(head.name))) for head in heads}


def loss_terms(heads, labels, logits, weights, training=False) -> dict:
  """{head: (loss_sum, weight_sum, metric_terms)} over this replica's batch.

  `training`: the gradients of these losses will be taken.
  """
  return {head.name: head.loss_and_metric_terms(labels[head.name], logits[head.name],
                                                weights.get(head.name), training)
          for head in heads}


def zero_terms(heads) -> dict:
  """Terms of an empty batch: the start of a sum of `loss_terms`."""
  zero = tf.constant(0.0)
  return {head.name: (zero, zero, {name: zero for name in head.fused_metric_terms})
          for head in heads}


def total_loss(heads, labels, logits, weights, global_weight_sums, step, parts=1):
  """`sum_h weight_h * loss_sum_h / global_weight_sum_h (+ regulariser_h / parts)`.

  Dividing by the weight sum of the *global* batch (all replicas, all
  micro-batches) makes the sum over replicas and micro-batches of these
  partial losses, and of their gradients, equal those of one device on the
  whole batch; a learned weighting's regulariser is split over the `parts`
  (replicas x micro-batches) the same way. Returns (total, {head: (loss_sum,
  weight_sum, metric_terms)}, {head: weight_h * partial loss_h}).
  """
  terms = loss_terms(heads, labels, logits, weights, training=True)
  weighted, total = {}, []
  for head in heads:
    partial = tf.math.divide_no_nan(terms[head.name][0], global_weight_sums[head.name])
    weighted[head.name] = head.weighting.weight(head.name, step) * partial
    total.append(weighted[head.name] + head.weighting.regulariser(head.name) / parts)
  return tf.add_n(total), terms, weighted


def gradients(model, heads, trainable, non_trainable, batch, global_weight_sums, loss_scale,
              step, micro_batches=1, replicas=1, per_head_indices=()):
  """Gradients of `loss_scale * total_loss` with respect to the trainable values.

  With `micro_batches` = K > 1 the batch is cut into K equal slices, run one
  after the other (activations of one slice at a time), and their gradients
  summed: the same update as the whole batch at once, since every slice is
  normalised by the global weight sums. `per_head_indices` selects trainable
  values (e.g. the shared trunk's) on which each head's own weighted loss is
  differentiated too, for GradNorm, PCGrad and the conflict diagnostics;
  empty, nothing per head is computed. Returns (gradients, new non-trainable
  values, total loss, {head: (loss_sum, weight_sum, metric_terms)}, logits, {head: [its
  gradients on the selected values]}).
  """
  parts = micro_batches * replicas
  if micro_batches == 1:
    return _one_pass(model, heads, trainable, non_trainable, batch, global_weight_sums,
                     loss_scale, step, parts, per_head_indices)
  sliced = tf.nest.map_structure(
      lambda t: tf.reshape(t, [micro_batches, -1, *t.shape[1:]]), batch)
  grads = [tf.zeros_like(value) for value in trainable]
  head_grads = {head.name: [tf.zeros_like(trainable[i]) for i in per_head_indices]
                for head in heads} if per_head_indices else {}
  total = tf.constant(0.0)
  terms = zero_terms(heads)
  logits = {head.name: tf.TensorArray(model.compute_dtype, size=micro_batches)
            for head in heads}
  for k in tf.range(micro_batches):
    part = tf.nest.map_structure(lambda t: t[k], sliced)  # pylint: disable=cell-var-from-loop
    part_grads, non_trainable, part_total, part_terms, part_logits, part_head_grads = _one_pass(
        model, heads, trainable, non_trainable, part, global_weight_sums, loss_scale, step,
        parts, per_head_indices)
    grads = [g + p for g, p in zip(grads, part_grads)]
    head_grads = {name: [g + p for g, p in zip(head_grads[name], part_head_grads[name])]
                  for name in head_grads}
    total += part_total
    terms = tf.nest.map_structure(tf.add, terms, part_terms)
    logits = {name: logits[name].write(k, tf.cast(part_logits[name], model.compute_dtype))
              for name in logits}
  logits = {name: _merge_slices(array.stack()) for name, array in logits.items()}
  return grads, non_trainable, total, terms, logits, head_grads


def _merge_slices(stacked):
  """[K, b, ...] -> [K * b, ...]."""
  return tf.reshape(stacked, [-1, *stacked.shape[2:]])


def _one_pass(model, heads, trainable, non_trainable, batch, global_weight_sums, loss_scale,
              step, parts, per_head_indices):
  features, labels, weights = batch
  with tf.GradientTape(persistent=bool(per_head_indices)) as tape:
    tape.watch(trainable)
    logits, new_non_trainable = model.stateless_call(trainable, non_trainable, features,
                                                     training=True)
    # The weightings' variables (a learned log-variance, GradNorm's weights)
    # are model variables too: read them as these values, so they get gradients.
    values = zip([*model.trainable_variables, *model.non_trainable_variables],
                 [*trainable, *non_trainable])
    with keras.StatelessScope(state_mapping=list(values)):
      total, terms, weighted = total_loss(heads, labels, logits, weights, global_weight_sums,
                                          step, parts)
    scaled = total * loss_scale
    scaled_weighted = {name: value * loss_scale for name, value in weighted.items()}
  grads = tape.gradient(scaled, trainable, unconnected_gradients=tf.UnconnectedGradients.ZERO)
  head_grads = {}
  if per_head_indices:
    with tf.name_scope("per_head_gradients"):
      selected = [trainable[i] for i in per_head_indices]
      head_grads = {name: tape.gradient(value, selected,
                                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
                    for name, value in scaled_weighted.items()}
    del tape
  return grads, new_non_trainable, total, terms, logits, head_grads


def forward(model, trainable, non_trainable, features):
  """Logits by head, from variable values (evaluation)."""
  logits, _ = model.stateless_call(trainable, non_trainable, features, training=False)
  return logits
