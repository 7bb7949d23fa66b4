"""Checks of batches against the heads' label specs.

Two layers. `check_element_spec` runs on the host before anything is traced
(keys, ranks, dtypes). `BatchChecks` counts, inside the compiled step, the
values no head may see: class ids out of range, labels that are not finite
or outside their range, negative or non-finite sample weights, NaN or Inf
float features. Under XLA an out-of-range class id silently makes the loss
NaN and `tf.debugging` assertions are ignored, so the step computes counts
(and the range of what came) instead, the loop stops applying steps from
the first bad batch, and the host raises after the loop with `message`.
Errors name the head (or feature) with what was expected and what came.
"""

import keras
import tensorflow as tf

from heads import base


def check_element_spec(element_spec, heads):
  """Validates a dataset's element spec; returns it as (features, labels, weights).

  `weights` is None when the dataset has no sample weights.
  """
  if not isinstance(element_spec, tuple) or len(element_spec) not in (2, 3):
    raise ValueError(
        "Dataset elements must be (features, labels) or (features, labels, "
        f"sample_weights); received {element_spec}.")
  features, labels = element_spec[:2]
  weights = element_spec[2] if len(element_spec) == 3 else None
  names = sorted(head.name for head in heads)
  _check_keys("labels", labels, names, require_all=True)
  if weights is not None:
    _check_keys("sample_weights", weights, names, require_all=False)
  for head in heads:
    _check_label(head, labels[head.name])
    if weights is not None and head.name in weights:
      _check_weight(head, weights[head.name], labels[head.name])
  return features, labels, weights


def check_train_arguments(dataset, steps, eval_dataset, heads, best_metric):
  """`Trainer.train`'s arguments, checked before anything is built; the features' spec."""
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
    raise ValueError(f"steps must be an integer >= 0; received {steps!r}.")
  features_spec, _, _ = check_element_spec(dataset.element_spec, heads)
  if best_metric is not None and eval_dataset is None:
    raise ValueError(f"best_metric={best_metric!r} needs evaluations: pass eval_dataset to "
                     "train (and set eval_every to evaluate during training).")
  if eval_dataset is not None:
    check_element_spec(eval_dataset.element_spec, heads)
  return features_spec


def check_eval_arguments(dataset, steps, heads):
  """`Trainer.evaluate`'s arguments (`steps`: None, all batches, or a count); the
  features' spec."""
  if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
    raise ValueError(f"evaluate steps must be an integer >= 1 or None; received {steps!r}.")
  return check_element_spec(dataset.element_spec, heads)[0]


def _check_keys(what, spec, names, require_all):
  if not isinstance(spec, dict):
    raise ValueError(
        f"{what} must be a dict keyed by head name (expected keys {names}); "
        f"received {spec}.")
  received = sorted(spec)
  for key in received:
    if key not in names:
      raise ValueError(
          f"{what} key '{key}' matches no head: expected keys {names}, "
          f"received {received}.")
  if require_all:
    for name in names:
      if name not in spec:
        raise ValueError(
            f"Head '{name}' has no {what} in the batch: expected keys {names}, "
            f"received {received}. For examples without this label, give it "
            "any valid value and a sample weight of 0.")


def _check_label(head, spec):
  forms = " or ".join(form.describe() for form in head.label_specs)
  if not isinstance(spec, tf.TensorSpec):
    raise ValueError(f"Head '{head.name}': labels must be dense {forms}; received {spec}.")
  if base.matching_label_spec(head, spec) is None:
    raise ValueError(
        f"Head '{head.name}': labels must be {forms}; received {spec.dtype.name} "
        f"of shape {_shape(spec.shape)}.")


def _check_weight(head, weight_spec, label_spec):
  allowed = [tf.TensorShape([None])]
  if head.per_token_weights:
    allowed.append(label_spec.shape)
  text = " or ".join(_shape(shape) for shape in allowed)
  if not isinstance(weight_spec, tf.TensorSpec) or not (
      weight_spec.dtype.is_floating or weight_spec.dtype.is_integer):
    raise ValueError(
        f"Head '{head.name}': sample weights must be a numeric tensor of shape {text}; "
        f"received {weight_spec}.")
  if not any(shape.is_compatible_with(weight_spec.shape) for shape in allowed):
    raise ValueError(
        f"Head '{head.name}': sample weights must have shape {text}; "
        f"received shape {_shape(weight_spec.shape)}.")


def _shape(shape):
  return "[" + ", ".join("batch" if i == 0 and d is None else str(d)
                         for i, d in enumerate(shape.as_list())) + "]"


class BatchChecks:
  """The in-graph checks of a batch's values, one row per check.

  Rows: for each head, its labels then its sample weights; then each float
  feature (in `tf.nest` order). `compute` returns `[rows, 3]` float32:
  (number of bad values, lowest and highest value that came), and
  `message(row, ...)` the error for a row whose count is not 0. The layout
  depends only on the heads and the features' structure, so a trace and the
  host agree on it.
  """

  def __init__(self, heads, features_spec):
    self.heads = list(heads)
    self._features = _feature_names(features_spec)
    self.rows = 2 * len(self.heads) + len(self._features)

  def compute(self, features, labels, weights):
    """[rows, 3]: (bad count, low, high) per check, over this batch (XLA-safe).

    Every label and weight row shares two reductions (one sum of the bad
    flags, one maximum of the negated and plain values, over the rows padded
    to one length), and each float feature takes one sum: inside the
    compiled step every reduction is compiled code of its own (two kernels
    on XLA's CPU backend), and the first call's compile time grows with
    their number.
    """
    parts = []
    for head in self.heads:
      y, w = labels[head.name], weights.get(head.name)
      parts.append(_label_part(head, y, w))
      parts.append(_weight_part(w))
    features = [_feature_row(value) for value in tf.nest.flatten(features)]
    return tf.concat([_rows(parts), *([tf.stack(features)] if features else [])], axis=0)

  @staticmethod
  def reduce_over_replicas(rows, replicas):
    """Sums the counts and takes the overall low and high of every replica's rows."""
    if replicas == 1:
      return rows
    gathered = tf.distribute.get_replica_context().all_gather(rows[tf.newaxis], axis=0)
    return tf.stack([tf.reduce_sum(gathered[:, :, 0], 0), tf.reduce_min(gathered[:, :, 1], 0),
                     tf.reduce_max(gathered[:, :, 2], 0)], axis=1)

  def message(self, row: int, count: float, low: float, high: float, labels_spec) -> str:
    """The error for `row`; `labels_spec` is the batches' label spec (which form came)."""
    if row < 2 * len(self.heads):
      head = self.heads[row // 2]
      if row % 2:
        return (f"Head '{head.name}': sample weights must be finite and >= 0; received "
                f"{count:g} bad values, from {low:g} to {high:g}")
      form = base.matching_label_spec(head, labels_spec[head.name])
      if form.dtype.is_integer:
        expected = f"class ids must be in [0, {form.num_classes})"
      elif form.value_range is not None:
        expected = f"labels must be finite and in [{form.value_range[0]:g}, " \
                   f"{form.value_range[1]:g}]"
      else:
        expected = "labels must be finite"
      return f"Head '{head.name}': {expected}; received values from {low:g} to {high:g}"
    name = self._features[row - 2 * len(self.heads)]
    return (f"Features '{name}' hold {count:g} NaN or infinite values in a batch; expected "
            "finite floats. Clean or impute them in the input pipeline")


def _feature_names(features_spec):
  """The float-checked features' names, in `tf.nest` order (a dict's keys, or "features")."""
  if isinstance(features_spec, dict):
    return ["/".join(str(key) for key in path)
            for path, _ in keras.tree.flatten_with_path(features_spec)]
  return ["features"] * len(tf.nest.flatten(features_spec))


def _rows(parts):
  """[len(parts), 3] float32: (count of bad, min and max of the present values) of
  `parts`, each None (nothing to check: 0 bad, range [1, 1]) or flat
  (bad, values, present): two reductions for all of them. Static sizes (the
  usual case) pad by constants, so the traced step holds no shape arithmetic."""
  checked = [part for part in parts if part is not None]  # Every head's labels at least.
  sizes = [bad.shape.num_elements() for bad, _, _ in checked]
  if None in sizes:
    length = tf.reduce_max(tf.stack([tf.size(bad) for bad, _, _ in checked]))
    sizes = [tf.size(bad) for bad, _, _ in checked]
  else:
    length = max(sizes)
  def padded(vectors, fill):
    return tf.stack([tf.pad(v, [[0, length - size]], constant_values=fill)
                     for v, size in zip(vectors, sizes)])
  counts = tf.einsum("rl,l->r", padded([tf.cast(bad, tf.float32) for bad, _, _ in checked], 0.0),
                     tf.ones([length]))  # A product with ones: one kernel (`heads.sums`).
  extremes = tf.reduce_max(tf.stack([
      padded([tf.where(present, sign * values, float("-inf")) for _, values, present in checked],
             float("-inf")) for sign in (-1.0, 1.0)], axis=1), axis=2)  # [checked, 2]
  rows = tf.concat([counts[:, tf.newaxis], extremes * [-1.0, 1.0]], axis=1)
  if len(checked) == len(parts):
    return rows
  # Parts with nothing to check take the row after the checked ones.
  rows = tf.concat([rows, [[0.0, 1.0, 1.0]]], axis=0)
  index, order = len(checked), iter(range(len(checked)))
  return tf.gather(rows, [index if part is None else next(order) for part in parts])


def _flat(bad, values, present):
  flat = lambda t: tf.reshape(t, [-1])
  return flat(bad), flat(tf.cast(values, tf.float32)), flat(present)


def _label_part(head, y, w):
  """Only labels with a non-zero weight count: a weight of 0 marks an absent label."""
  form = base.matching_label_spec(head, tf.TensorSpec.from_tensor(y))
  present = tf.ones_like(y, tf.bool)
  if w is not None:
    w = w != 0
    for _ in range(y.shape.rank - w.shape.rank):
      w = w[..., tf.newaxis]
    present = present & w
  if form.dtype.is_integer:
    ids = tf.cast(y, tf.int64)
    if form.ignore_value is not None:
      present = present & tf.not_equal(ids, form.ignore_value)
    bad = present & ((ids < 0) | (ids >= form.num_classes))
    return _flat(bad, ids, present)
  values = tf.cast(y, tf.float32)
  bad = tf.logical_not(tf.math.is_finite(values))
  if form.value_range is not None:
    low, high = form.value_range
    bad = bad | (values < low) | (values > high)
  return _flat(present & bad, values, present)


def _weight_part(w):
  if w is None:
    return None
  w = tf.cast(w, tf.float32)
  bad = tf.logical_not(tf.math.is_finite(w)) | (w < 0)
  return _flat(bad, w, tf.ones_like(w, tf.bool))


def _feature_row(value):
  if not value.dtype.is_floating:
    return tf.zeros([3])
  bad = tf.logical_not(tf.math.is_finite(value))
  return tf.stack([tf.reduce_sum(tf.cast(bad, tf.float32)), 0.0, 0.0])
