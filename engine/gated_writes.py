"""An optimizer update that writes nothing when a predicate is False, in one pass.

A step that must not be applied (a bad batch, a non-finite gradient, a
stopped loop) is gated by a select, not a conditional: inside XLA a
conditional around the update copies every weight and slot in and out of
its branches, and on a GPU or TPU its predicate would be read by the host.

The plain way to gate (snapshot every variable, let the optimizer write,
then write back `where(applied, new, snapshot)`) makes XLA copy every slot
before the optimizer overwrites it in place, and pass over it again for the
select: ~180 kernels per step instead of ~76 for the small benchmark model,
and two extra memory passes over the slots for the large one. Keras's
`stateless_apply` would give the new values without writing, but its
TensorFlow backend refuses it (and `keras.StatelessScope` does not catch
the TensorFlow optimizer's writes, which go to the `tf.Variable` itself).

So the optimizer's own write methods (`assign`, `assign_add`, `assign_sub`,
through which every Keras optimizer's `update_step` writes) are replaced,
for the duration of one `apply`, by versions that write `where(applied,
new, old)`: one fused read-compute-select-write per slot, no copy. Whatever
else `apply` writes (the iteration counter, the TensorFlow backend's weight
decay, constraints, EMA, gradient accumulation, sparse updates) is found in
the graph the call built and gated the plain way, with a snapshot. Snapshots
that end up unused cost nothing: XLA drops them.
"""

import contextlib

import keras
import tensorflow as tf

# Ops that read a variable without writing it.
_READS = frozenset({"ReadVariableOp", "VarIsInitializedOp", "VariableShape"})


def apply(optimizer, apply_fn, state, applied):
  """Runs `apply_fn()` (which calls `optimizer.apply`) so that none of `state`
  (tf.Variables or Keras variables) changes where `applied` is False.

  Must run while tracing a `tf.function` (the written variables are found in
  its graph); `state` must hold every variable `apply_fn` may write.
  """
  graph = tf.compat.v1.get_default_graph()
  variables = [_tf_variable(v) for v in state]
  # One read each (`value()` adds no Identity): most are never used.
  snapshots = [v.value() for v in variables]
  first_op = len(graph.get_operations())
  gated_ops = set()
  with _gated_methods(optimizer, applied, graph, gated_ops):
    apply_fn()
  written_directly = _resources_used(graph.get_operations()[first_op:], gated_ops)
  for variable, snapshot in zip(variables, snapshots):
    if _internal_handle(graph, variable).ref() in written_directly:
      variable.assign(tf.where(applied, variable.read_value(), snapshot))


@contextlib.contextmanager
def _gated_methods(optimizer, applied, graph, gated_ops):
  """Replaces the optimizer instance's three write methods for the duration."""
  plain = {name: getattr(optimizer, name) for name in ("assign", "assign_add", "assign_sub")}
  combine = {"assign": lambda old, value: value, "assign_add": tf.add,
             "assign_sub": tf.subtract}

  def gated(name):
    def write(variable, value):
      variable = _tf_variable(variable)
      if isinstance(value, tf.IndexedSlices):  # A scatter: gated with a snapshot.
        return plain[name](variable, value)
      old = variable.read_value()
      new = combine[name](old, tf.cast(value, variable.dtype))
      start = len(graph.get_operations())
      variable.assign(tf.where(applied, new, old))
      gated_ops.update(op.name for op in graph.get_operations()[start:])
      return None
    return write

  for name in plain:
    object.__setattr__(optimizer, name, gated(name))
  try:
    yield
  finally:
    for name in plain:
      object.__delattr__(optimizer, name)


def _resources_used(ops, gated_ops) -> set:
  """Refs of the resource tensors that `ops` (other than reads and the gated
  writes) take as inputs: conservatively, everything they may have written."""
  used = set()
  for op in ops:
    if op.type in _READS or op.name in gated_ops:
      continue
    used.update(t.ref() for t in op.inputs if t.dtype == tf.resource)
  return used


def _internal_handle(graph, variable):
  """The tensor that stands for `variable`'s handle inside `graph`."""
  return graph.capture(variable.handle)


def _tf_variable(variable):
  """A Keras variable's `tf.Variable` (its `.value`); a `tf.Variable` itself."""
  return variable.value if isinstance(variable, keras.Variable) else variable
