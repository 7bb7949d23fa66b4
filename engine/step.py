"""The math of one training step, as pure functions of tensors.

No variables are read or written here: the model runs on variable values
inside a `keras.StatelessScope`, so these functions compile with XLA under
any strategy (XLA cannot update a MirroredVariable from a replica, nor
all-reduce on CPU). The replica step reads the variables, all-reduces and
applies.
"""

import keras
import tensorflow as tf

from heads import guard as guard_lib


def local_weight_sums(heads, labels, weights) -> dict:
  """Each head's sum of loss weights over this replica's batch."""
  return {head.name: tf.reduce_sum(head.loss_weights(
      tf.convert_to_tensor(labels[head.name]), weights.get(head.name))) for head in heads}


def loss_terms(heads, labels, logits, weights, training=False) -> dict:
  """{head: (loss_sum, weight_sum, extras)} over this replica's batch.

  `training`: the gradients of these losses will be taken.
  """
  return {head.name: head.loss_terms(labels[head.name], logits[head.name],
                                     weights.get(head.name), training)
          for head in heads}


def total_loss(heads, labels, logits, weights, global_weight_sums, step, parts=1):
  """`sum_h weight_h * loss_sum_h / global_weight_sum_h (+ regulariser_h / parts)`.

  Dividing by the weight sum of the *global* batch (all replicas, all
  micro-batches) makes the sum over replicas and micro-batches of these
  partial losses, and of their gradients, equal those of one device on the
  whole batch; a learned weighting's regulariser is split over the `parts`
  (replicas x micro-batches) the same way. Returns (total, {head: (loss_sum,
  weight_sum, extras)}, {head: weight_h * partial loss_h}).
  """
  terms = loss_terms(heads, labels, logits, weights, training=True)
  weighted, total = {}, []
  for head in heads:
    partial = tf.math.divide_no_nan(terms[head.name][0], global_weight_sums[head.name])
    weighted[head.name] = head.weighting.weight(head.name, step) * partial
    total.append(weighted[head.name] + head.weighting.regulariser(head.name) / parts)
  return tf.add_n(total), terms, weighted


GUARD_ROWS = 8  # The double-softmax guard looks at this many examples of a batch.


def probability_flags(heads, head_inputs, logits):
  """[heads, 2] bool: whether each guarded head's input, and its logits, look like
  probabilities, on the batch's first `GUARD_ROWS` examples. Heads reading the
  same trunk output share one check of it."""
  guarded = [isinstance(head, guard_lib.DistributionHead) and head.guarded for head in heads]
  shared = {}
  for head, g in zip(heads, guarded):
    if g:
      shared.setdefault(head.input_key, head_inputs[head.name][:GUARD_ROWS])
  if not shared:
    return tf.zeros([len(heads), 2], tf.bool)
  inputs = list(shared)
  tensors = [*shared.values(), *(logits[h.name][:GUARD_ROWS] for h, g in zip(heads, guarded) if g)]
  # One call: all of them in one reduction.
  flags = tf.unstack(guard_lib.probability_checks(tensors))
  logit_flags = iter(flags[len(inputs):])
  return tf.stack([tf.stack([flags[inputs.index(head.input_key)], next(logit_flags)]) if g
                   else tf.zeros([2], tf.bool) for head, g in zip(heads, guarded)])


def gradients(model, heads, trainable, non_trainable, batch, global_weight_sums, loss_scale,
              step, micro_batches=1, replicas=1, per_head_indices=()):
  """Gradients of `loss_scale * total_loss` with respect to the trainable values.

  With `micro_batches` = K > 1 the batch is cut into K equal slices, run one
  after the other (activations of one slice at a time), and their gradients
  summed: the same update as the whole batch at once, since every slice is
  normalised by the global weight sums. `per_head_indices` selects trainable
  values (e.g. the shared trunk's) on which each head's own weighted loss is
  differentiated too, for GradNorm, PCGrad and the conflict diagnostics.

  Returns a dict: gradients, non_trainable (new values), total, terms ({head:
  (loss_sum, weight_sum, extras)}), logits, head_gradients ({head: [its
  gradients on the selected values]}), probabilities ([heads, 2] flags).
  """
  parts = micro_batches * replicas
  def one_pass(part, non_trainable):
    return _one_pass(model, heads, trainable, non_trainable, part, global_weight_sums,
                     loss_scale, step, parts, per_head_indices)
  if micro_batches == 1:
    return one_pass(batch, non_trainable)
  sliced = tf.nest.map_structure(
      lambda t: tf.reshape(t, [micro_batches, -1, *t.shape[1:]]), batch)
  # The first slice outside the loop gives the structure the loop carries.
  first = one_pass(tf.nest.map_structure(lambda t: t[0], sliced), non_trainable)
  logits = first.pop("logits")
  logits_parts = {name: tf.TensorArray(model.compute_dtype, size=micro_batches).write(
      0, tf.cast(value, model.compute_dtype)) for name, value in logits.items()}
  def body(k, carried, logits_parts):
    part = one_pass(tf.nest.map_structure(lambda t: t[k], sliced), carried["non_trainable"])
    part_logits = part.pop("logits")
    logits_parts = {name: logits_parts[name].write(k, tf.cast(part_logits[name],
                                                              model.compute_dtype))
                    for name in logits_parts}
    carried = {"non_trainable": part["non_trainable"],
               "probabilities": carried["probabilities"] | part["probabilities"],
               **{key: tf.nest.map_structure(tf.add, carried[key], part[key])
                  for key in ("gradients", "total", "terms", "head_gradients")}}
    return k + 1, carried, logits_parts
  _, carried, logits_parts = tf.while_loop(lambda k, *_: k < micro_batches, body,
                                           (tf.constant(1), first, logits_parts))
  carried["logits"] = {name: _merge_slices(array.stack()) for name, array in logits_parts.items()}
  return carried


def _merge_slices(stacked):
  """[K, b, ...] -> [K * b, ...]."""
  return tf.reshape(stacked, [-1, *stacked.shape[2:]])


def _one_pass(model, heads, trainable, non_trainable, batch, global_weight_sums, loss_scale,
              step, parts, per_head_indices):
  features, labels, weights = batch
  variables = [*model.trainable_variables, *model.non_trainable_variables]
  with tf.GradientTape(persistent=bool(per_head_indices)) as tape:
    tape.watch(trainable)
    # The weightings' variables (a learned log-variance, GradNorm's weights)
    # are model variables too: read as these values, so they get gradients.
    with keras.StatelessScope(state_mapping=list(zip(variables, [*trainable, *non_trainable]))
                              ) as scope:
      head_inputs, logits = model.forward(features, training=True)
      total, terms, weighted = total_loss(heads, labels, logits, weights, global_weight_sums,
                                          step, parts)
    new_non_trainable = [scope.get_current_value(v) for v in model.non_trainable_variables]
    scaled = total * loss_scale
  grads = tape.gradient(scaled, trainable, unconnected_gradients=tf.UnconnectedGradients.ZERO)
  head_grads = {}
  if per_head_indices:
    selected = [trainable[i] for i in per_head_indices]
    with tf.name_scope("per_head_gradients"):
      head_grads = {name: tape.gradient(value, selected, output_gradients=loss_scale,
                                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
                    for name, value in weighted.items()}
    del tape
  flags = probability_flags(heads, head_inputs, logits)
  return {"gradients": grads, "non_trainable": new_non_trainable, "total": total,
          "terms": terms, "logits": logits, "head_gradients": head_grads,
          "probabilities": flags}


def forward(model, trainable, non_trainable, features):
  """Logits by head, from variable values (evaluation)."""
  logits, _ = model.stateless_call(trainable, non_trainable, features, training=False)
  return logits
