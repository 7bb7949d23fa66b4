"""What the loops measure, as sums inside the compiled step; results at read time.

Training (`train_metrics="basic"`, the default) keeps, per head, four sums
in one variable: the loss sum and its weight sum, and the head's main metric
(`Head.main_metric`: accuracy, MAE, ...) with its weight sum, taken from the
`extras` of the head's own `loss_terms` (nothing computed twice). One
`assign_add` per step. `train_metrics="full"` and evaluation also update
every head's Keras metrics (top-k, NLL, ECE, ...). All state is sums and
counts, so replicas and batches add up exactly: the variable is
sync-on-read (each replica adds its share; reading sums them).
"""

import tensorflow as tf

_HEAD_SLOTS = ("loss", "loss_weight", "metric", "metric_weight")
_GLOBAL_SLOTS = ("gradient_norm", "gradient_norm_count", "examples")


class Measurements:
  """Per-loop sums and the heads' metrics; create under the strategy's scope."""

  def __init__(self, heads, replicas: int):
    self.heads = list(heads)
    self._replicas = replicas
    size = len(_HEAD_SLOTS) * len(self.heads) + len(_GLOBAL_SLOTS)
    self.sums = tf.Variable(tf.zeros([size]), trainable=False, name="loop_sums",
                            synchronization=tf.VariableSynchronization.ON_READ,
                            aggregation=tf.VariableAggregation.SUM)

  # --- in the compiled step (one replica's batch) ---------------------------

  def accumulate(self, terms, examples, counted=None, gradient_norm=None, norm_ok=None):
    """Adds one batch: `terms` {head: (loss_sum, weight_sum, extras)}.

    `counted` (a bool; None = always) gates everything: a step that is not
    counted adds zeros, even where its terms are NaN. The gradient norm is
    that of the all-reduced gradients, the same on every replica, so each
    adds its share.
    """
    values = []
    for head in self.heads:
      loss_sum, weight_sum, extras = terms[head.name]
      values += [loss_sum, weight_sum, extras[head.main_metric], extras["metric_weight"]]
    share = 1.0 / self._replicas
    if gradient_norm is None:  # Not measured in this step.
      values += [0.0, 0.0]
    else:
      ok = tf.cast(norm_ok, tf.float32)
      values += [tf.where(norm_ok, gradient_norm, 0.0) * share, ok * share]
    values.append(tf.cast(examples, tf.float32))
    values = tf.stack([tf.cast(v, tf.float32) for v in values])
    if counted is not None:
      values = tf.where(counted, values, tf.zeros_like(values))
    self.sums.assign_add(values)

  def update_metrics(self, labels, logits, weights, terms, counted=None):
    """Every head's Keras metrics; a step that is not counted adds weight 0."""
    for head in self.heads:
      y, z, w = labels[head.name], logits[head.name], weights.get(head.name)
      extras = terms[head.name][2]
      if counted is not None:
        if w is None:
          w = tf.ones(tf.shape(y)[:1], tf.float32)
        w = tf.where(counted, tf.cast(w, tf.float32), tf.zeros_like(w, tf.float32))
        z = tf.where(counted, z, tf.zeros_like(z))
        extras = {k: tf.where(counted, v, tf.zeros_like(v)) for k, v in extras.items()}
      head.update_metrics(y, z, w, extras)

  # --- between loops (cross-replica) ----------------------------------------

  def results(self, step, full: bool) -> dict:
    """{"loss", "<head>/loss", "<head>/weighted_loss", "<head>/<metric>", ...} as tensors.

    `full`: every metric of the heads (Keras metrics); else each head's main
    metric from the sums. Each head's loss is its loss sum over its weight
    sum: a weighted mean over every example, never a mean of batch means.
    """
    sums = tf.convert_to_tensor(self.sums)
    results = {"loss": tf.constant(0.0)}
    for i, head in enumerate(self.heads):
      loss_sum, loss_weight, metric, metric_weight = tf.unstack(
          sums[len(_HEAD_SLOTS) * i:len(_HEAD_SLOTS) * (i + 1)])
      loss = tf.math.divide_no_nan(loss_sum, loss_weight)
      weight = tf.cast(head.weighting.weight(head.name, step), tf.float32)
      results[f"{head.name}/loss"] = loss
      results[f"{head.name}/weighted_loss"] = weight * loss
      results["loss"] += weight * loss + head.weighting.regulariser(head.name)
      if full:
        for name, value in head.metric_results().items():
          results[f"{head.name}/{name}"] = tf.cast(value, tf.float32)
      else:
        results[f"{head.name}/{head.main_metric}"] = tf.math.divide_no_nan(metric, metric_weight)
    return results

  def gradient_norm(self):
    """(mean gradient norm, how many applied steps measured it) over the loop.

    The norm is measured where the step computes it anyway or where it is
    asked for (`GradientUpdate.apply`): every step with `clip_norm` or
    `train_metrics="full"`, else the diagnostic steps (`Config.diagnostics_every`).
    """
    sums = tf.convert_to_tensor(self.sums)
    start = len(_HEAD_SLOTS) * len(self.heads)
    return tf.math.divide_no_nan(sums[start], sums[start + 1]), sums[start + 1]

  def examples(self):
    return tf.convert_to_tensor(self.sums)[-1]

  def reset(self, with_metrics=True):
    self.sums.assign(tf.zeros_like(self.sums))
    if with_metrics:
      for head in self.heads:
        for metric in head.metrics:
          metric.reset_state()
