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
      _check_weight(head, weights[head.name])
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
  expected = head.label_spec
  if not isinstance(spec, tf.TensorSpec):
    raise ValueError(
        f"Head '{head.name}': labels must be a dense tensor of {expected.describe()}; "
        f"received {spec}.")
  if not expected.accepts_dtype(spec.dtype):
    raise ValueError(
        f"Head '{head.name}': labels must be {expected.describe()}; "
        f"received dtype {spec.dtype.name}.")
  want = tf.TensorShape([None, *expected.shape])
  if not want.is_compatible_with(spec.shape):
    raise ValueError(
        f"Head '{head.name}': labels must have shape {_shape(want)} "
        f"({expected.describe()}); received shape {_shape(spec.shape)}.")


def _check_weight(head, spec):
  if not isinstance(spec, tf.TensorSpec) or not (spec.dtype.is_floating or spec.dtype.is_integer):
    raise ValueError(
        f"Head '{head.name}': sample weights must be a numeric tensor of shape "
        f"[batch]; received {spec}.")
  if not tf.TensorShape([None]).is_compatible_with(spec.shape):
    raise ValueError(
        f"Head '{head.name}': sample weights must have shape [batch]; "
        f"received shape {_shape(spec.shape)}.")


def _shape(shape):
  return "[" + ", ".join("batch" if i == 0 and d is None else str(d)
                         for i, d in enumerate(shape.as_list())) + "]"


def assert_label_values(heads, labels, weights):
  """In-graph check that every present class id lies in [0, num_classes).

  Only examples with a non-zero weight are checked: a weight of 0 marks an
  absent label whose placeholder value may be anything. Returns the ops'
  control dependencies as a list (empty in eager mode).
  """
  checks = []
  for head in heads:
    num_classes = head.label_spec.num_classes
    if num_classes is None:
      continue
    y = tf.cast(labels[head.name], tf.int64)
    w = weights.get(head.name) if weights else None
    present = tf.ones_like(y, tf.bool) if w is None else tf.not_equal(
        tf.reshape(w, [-1] + [1] * (len(y.shape) - 1)), 0)
    y_present = tf.boolean_mask(y, present)
    ok = tf.reduce_all((y_present >= 0) & (y_present < num_classes))
    checks.append(tf.debugging.Assert(ok, [
        f"{_MARK} '{head.name}': class ids must be in [0, {num_classes}); received values from",
        tf.reduce_min(y_present), "to", tf.reduce_max(y_present)]))
  return checks


def as_value_error(error: tf.errors.InvalidArgumentError):
  """The ValueError an in-graph label assertion stands for, or None.

  TensorFlow prints an assertion as `[message] [min] [to] [max]`, with
  quotes escaped; this turns it back into one sentence.
  """
  text = error.message.replace("\\'", "'")
  match = re.search(re.escape(_MARK) + r"([^\]]*)\] \[(-?\d+)\] \[to\] \[(-?\d+)\]", text)
  if match is None:
    return None
  detail, low, high = match.groups()
  return ValueError(f"Head{detail} {low} to {high}.")
