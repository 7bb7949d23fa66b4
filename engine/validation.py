"""Checks of batches against the heads' label specs.

Two layers: `check_element_spec` runs on the host before anything is traced
(keys, ranks, dtypes), and `assert_label_values` runs in the graph, outside
XLA, before each step: under XLA an out-of-range class id makes the loss
silently NaN, and `tf.debugging` asserts inside a compiled function are
ignored. Errors name the head with what was expected and what came.
"""

import re

import tensorflow as tf

# Marks the in-graph assertion messages so the trainer can re-raise them as a
# plain ValueError without TensorFlow's graph context around them.
_MARK = "Invalid batch for head"
_FEATURES_MARK = "Invalid batch: features"


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
  forms = " or ".join(form.describe() for form in head.accepted_label_specs)
  if not isinstance(spec, tf.TensorSpec):
    raise ValueError(f"Head '{head.name}': labels must be dense {forms}; received {spec}.")
  if head.label_spec_for(spec) is None:
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


def assert_label_values(heads, labels, weights):
  """In-graph checks that every present label lies in its head's range.

  Class ids must lie in [0, num_classes) (or equal the ignore value); floats
  must be finite and inside the value range. Only labels with a non-zero
  weight are checked: a weight of 0 marks an absent label whose placeholder
  may be anything. Returns the assertion ops (empty in eager mode).
  """
  checks = []
  for head in heads:
    y = labels[head.name]
    form = head.label_spec_for(tf.TensorSpec.from_tensor(y))
    present = tf.ones_like(y, tf.bool)
    w = weights.get(head.name)
    if w is not None:
      w = w != 0
      for _ in range(y.shape.rank - w.shape.rank):
        w = w[..., tf.newaxis]
      present = tf.logical_and(present, w)
    if form.dtype.is_integer and form.num_classes is not None:
      y = tf.cast(y, tf.int64)
      if form.ignore_value is not None:
        present = tf.logical_and(present, tf.not_equal(y, form.ignore_value))
      values = tf.boolean_mask(y, present)
      ok = tf.reduce_all((values >= 0) & (values < form.num_classes))
      expected = f"class ids must be in [0, {form.num_classes})"
    elif form.dtype.is_floating:
      values = tf.boolean_mask(tf.cast(y, tf.float32), present)
      ok = tf.reduce_all(tf.math.is_finite(values))
      expected = "labels must be finite"
      if form.value_range is not None:
        low, high = form.value_range
        ok = tf.logical_and(ok, tf.reduce_all((values >= low) & (values <= high)))
        expected = f"labels must be finite and in [{low:g}, {high:g}]"
    else:
      continue
    checks.append(tf.debugging.Assert(ok, [
        f"{_MARK} '{head.name}': {expected}; received values from",
        tf.reduce_min(values), "to", tf.reduce_max(values)], summarize=1))
  return checks


def assert_finite_features(features):
  """In-graph checks that float features hold no NaN or Inf; the assertion ops.

  Under XLA a NaN feature only shows up later as a NaN loss of every head;
  this names the feature instead.
  """
  checks = []
  flat = (tf.nest.flatten_with_joined_string_paths(features) if isinstance(features, dict)
          else [("features", features)])
  for name, value in flat:
    if not value.dtype.is_floating:
      continue
    bad = tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(value)), tf.int64))
    checks.append(tf.debugging.Assert(tf.equal(bad, 0), [
        f"{_FEATURES_MARK} '{name}' hold", bad, "NaN or infinite values"], summarize=1))
  return checks


def as_value_error(error: tf.errors.InvalidArgumentError):
  """The ValueError an in-graph label assertion stands for, or None.

  TensorFlow prints an assertion as `[message] [min] [to] [max]`, with
  quotes escaped; this turns it back into one sentence.
  """
  text = error.message.replace("\\'", "'")
  match = re.search(re.escape(_FEATURES_MARK) + r" '(.*?)' hold\] \[(\d+)\]", text)
  if match is not None:
    name, count = match.groups()
    return ValueError(f"Features '{name}' hold {count} NaN or infinite values in a batch; "
                      "expected finite floats. Clean or impute them in the input pipeline.")
  match = re.search(re.escape(_MARK) + r"(.*?)\] \[([^\]]*)\] \[to\] \[([^\]]*)\]", text)
  if match is None:
    return None
  detail, low, high = match.groups()
  return ValueError(f"Head{detail} {low} to {high}.")
