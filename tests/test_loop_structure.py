"""What keeps GPUs and TPUs fed: per step, the training loop runs nothing the
step computed through the host. Checked on the traced graph, so it needs no GPU.

A loop that decides per step, on a value computed on the device, whether to
go on (`if not healthy: break`) or what to run (a conditional in the loop
body) makes the host wait for the device every step. The loop body may hold
only the iterator's fetches, the loop counter and the call of the compiled
program (one step, or `steps_per_program` steps with their batches stacked).
"""

import keras
import tensorflow as tf

import engine
import heads

_CONDITIONALS = {"If", "StatelessIf", "Case", "StatelessCase"}
_CALLS = {"StatefulPartitionedCall", "PartitionedCall"}


def _library(graph):
  return {f.signature.name: f for f in graph.as_graph_def().library.function}


def _loop(trainer, dataset):
  iterator = iter(dataset if trainer.strategy.num_replicas_in_sync == 1
                  else trainer.strategy.experimental_distribute_dataset(dataset))
  graph = trainer.loops.train_function.get_concrete_function(
      iterator, tf.constant(1)).graph
  library = _library(graph)
  whiles = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
  assert len(whiles) == 1, [op.type for op in graph.get_operations()]
  return library, library[whiles[0].get_attr("body").name], library[whiles[0].get_attr("cond").name]


def _ancestors(function, output_name):
  """The ops whose values the function's output is computed from.

  Control edges are left out: TensorFlow orders every stateful op of a
  function before its outputs, which makes no value wait for another.
  """
  nodes = {node.name: node for node in function.node_def}
  seen, stack = set(), [function.ret[output_name].split(":")[0]]
  while stack:
    name = stack.pop().split(":")[0]
    if name in seen or name not in nodes:
      continue
    seen.add(name)
    stack.extend(i for i in nodes[name].input if not i.startswith("^"))
  return {nodes[name].op for name in seen}


def _xla_compiled(library, node):
  name = node.attr["f"].func.name
  return name in library and library[name].attr["_XlaMustCompile"].b


def _trainer(tmp_path, **config):
  keras.utils.set_random_seed(0)
  return engine.Trainer(
      trunk=keras.Sequential([keras.layers.Dense(16, activation="relu")]),
      heads=heads.parse_heads(engine.data.DEMO_HEADS), optimizer=keras.optimizers.Adam(1e-3),
      config=engine.Config(model_dir=str(tmp_path), steps_per_loop=2, seed=0, **config))


def _functions_called(library, function):
  """The library functions `function` calls (branches, loop bodies), transitively."""
  names, stack = set(), [function]
  while stack:
    for node in stack.pop().node_def:
      for value in node.attr.values():
        name = value.func.name
        if name in library and name not in names:
          names.add(name)
          stack.append(library[name])
  return names


def test_one_replica_loop_body_is_get_next_the_counter_and_one_xla_program(tmp_path):
  trainer = _trainer(tmp_path, jit_compile=True, steps_per_program=1)
  data = engine.data.synthetic("train", 32, num_examples=128)
  trainer.train(data, steps=2)
  library, body, cond = _loop(trainer, data)
  ops = [node.op for node in body.node_def]
  assert not {"Assert"} & {node.op for f in library.values() for node in f.node_def}
  assert not _CONDITIONALS & set(ops), ops
  calls = [node for node in body.node_def if node.op in _CALLS]
  assert len(calls) == 1 and _xla_compiled(library, calls[0]), ops  # The whole step.
  assert ops.count("IteratorGetNext") == 1, ops
  outside = set(ops) - _CALLS - {"IteratorGetNext", "AddV2", "Identity", "Const", "NoOp"}
  assert not outside, f"per-step work outside XLA: {sorted(outside)}"
  # The loop goes on by its counter alone, never by a value the step computed.
  counter = body.signature.output_arg[0].name
  kinds = _ancestors(body, counter)
  assert not kinds & _CALLS, kinds
  assert "LogicalAnd" not in {node.op for node in cond.node_def}
  assert trainer.trace_counts["train_loop"] == 1  # Looking did not retrace.


# Host ops a group's fetches may use: the optional get_next, stacking, counters.
_FETCHING = {"IteratorGetNext", "IteratorGetNextAsOptional", "OptionalHasValue",
             "OptionalGetValue", "TensorListReserve", "TensorListSetItem", "TensorListStack",
             "While", "If", "StatelessIf", "Less", "Minimum", "Sub", "AddV2", "Cast", "LogicalAnd", "Identity",
             "Const", "NoOp"}


def test_several_steps_per_program_fetch_on_the_host_and_never_read_the_program(tmp_path):
  trainer = _trainer(tmp_path, jit_compile=True, steps_per_program=2)
  data = engine.data.synthetic("train", 32, num_examples=128)
  trainer.train(data, steps=4)
  assert trainer.loops.steps_per_program(data.element_spec) == 2
  library, body, cond = _loop(trainer, data)
  assert not {"Assert"} & {node.op for f in library.values() for node in f.node_def}
  calls = [node for node in body.node_def if node.op in _CALLS]
  assert len(calls) == 1 and _xla_compiled(library, calls[0]), [n.op for n in body.node_def]
  program = calls[0].name
  # Nothing in the loop reads what the program computed (control edges only),
  # so no conditional, fetch or counter waits for the device.
  for node in body.node_def:
    assert not [i for i in node.input if i.split(":")[0] == program], node
  fetching = [library[name] for name in _functions_called(library, body)
              if not library[name].attr["_XlaMustCompile"].b
              and name not in _functions_called(library, library[calls[0].attr["f"].func.name])
              and name != calls[0].attr["f"].func.name]
  ops = {node.op for f in [body, *fetching] for node in f.node_def} - _CALLS
  assert not ops - _FETCHING, f"per-step work outside XLA: {sorted(ops - _FETCHING)}"
  assert not _CALLS & {node.op for f in fetching for node in f.node_def}
  assert "LogicalAnd" not in {node.op for node in cond.node_def}
  assert trainer.trace_counts["train_loop"] == 1


def test_a_loop_with_a_break_on_a_step_value_fails_the_check(tmp_path):
  """The check above can fail: a loop that breaks on the step's result trips it."""
  step = tf.function(lambda x: tf.reduce_sum(x) > 0, jit_compile=True)

  @tf.function
  def breaking_loop(iterator, n):
    for _ in tf.range(n):
      if not step(next(iterator)):
        break

  iterator = iter(tf.data.Dataset.from_tensors(tf.ones([2])).repeat())
  graph = breaking_loop.get_concrete_function(iterator, tf.constant(1)).graph
  library = _library(graph)
  (loop,) = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
  body = library[loop.get_attr("body").name]
  cond = library[loop.get_attr("cond").name]
  ops = {node.op for node in body.node_def}
  assert (_CONDITIONALS & ops) or "LogicalAnd" in {node.op for node in cond.node_def}
  del tmp_path


def test_several_replicas_put_no_assertion_no_conditional_and_no_break_in_the_loop(tmp_path):
  strategy = engine.create_strategy(engine.Config(model_dir="unused", strategy="mirrored",
                                                  num_cpu_devices=2))
  with strategy.scope():
    trainer = _trainer(tmp_path, jit_compile=True, strategy="mirrored", num_cpu_devices=2)
  data = engine.data.synthetic("train", 32, num_examples=128)
  trainer.build(data.element_spec[0])  # Traced, not run: the structure is in the graph.
  library, body, cond = _loop(trainer, data)
  assert not {"Assert"} & {node.op for f in library.values() for node in f.node_def}
  # The replica step is traced into the loop body (it all-reduces): no
  # conditional anywhere in it, the update included.
  ops = {node.op for node in body.node_def}
  assert not _CONDITIONALS & ops, sorted(_CONDITIONALS & ops)
  calls = [node for node in body.node_def if node.op in _CALLS]
  assert any(_xla_compiled(library, node) for node in calls)  # engine.step.gradients.
  kinds = _ancestors(body, body.signature.output_arg[0].name)
  assert not kinds & _CALLS and "LogicalAnd" not in {node.op for node in cond.node_def}
