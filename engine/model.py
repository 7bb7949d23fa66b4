"""The multi-head model: one shared trunk, run once, and named heads on it."""

import keras
import tensorflow as tf

import heads as heads_lib


class MultiHeadModel(keras.Model):
  """Runs the trunk once and every head on its output; returns logits by head.

  The trunk is any Keras layer or model. It may return one tensor, read by
  every head, or a dict of named features, from which each head reads the
  key given as its `input`.
  """

  def __init__(self, trunk, heads):
    super().__init__(name="multi_head_model")
    if not isinstance(trunk, keras.layers.Layer):
      raise TypeError(f"trunk must be a Keras layer or model; received {type(trunk).__name__}.")
    heads = list(heads)
    if not heads:
      raise ValueError("heads must name at least one head; received none.")
    for head in heads:
      if not isinstance(head, heads_lib.Head):
        raise TypeError(
            f"Every head must be a heads.Head; received {type(head).__name__}.")
    names = [head.name for head in heads]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
      raise ValueError(f"Head names must be unique; {duplicates} appear more than once.")
    self.trunk = trunk
    self.head_list = heads

  @property
  def head_names(self):
    return [head.name for head in self.head_list]

  def call(self, features, training=False):
    return self.forward(features, training)[1]

  def forward(self, features, training=False):
    """({head: the trunk output it reads}, {head: its logits})."""
    shared = self.trunk(features, training=training)
    inputs = {head.name: self.select(shared, head) for head in self.head_list}
    return inputs, {head.name: head(inputs[head.name], training=training)
                    for head in self.head_list}

  def select(self, shared, head):
    """The part of the trunk's output that `head` reads."""
    if not isinstance(shared, dict):
      if head.input_key is not None:
        raise ValueError(
            f"Head '{head.name}' reads input={head.input_key!r}, but the trunk "
            "returns a single tensor; pass input=None.")
      return shared
    if head.input_key not in shared:
      raise ValueError(
          f"Head '{head.name}' reads input={head.input_key!r}; the trunk returns "
          f"the features {sorted(shared)}: pass one of them as input=.")
    return shared[head.input_key]


def build(model: MultiHeadModel, features_spec):
  """Creates the model's variables by running it once on zeros of that spec."""
  def zeros(spec):
    shape = [1 if dim is None else dim for dim in spec.shape.as_list()]
    shape[0] = 1
    return tf.zeros(shape, spec.dtype)
  model(tf.nest.map_structure(zeros, features_spec), training=False)
