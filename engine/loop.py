"""The compiled loops, and where XLA applies.

A training loop is one `tf.function` holding a `tf.while_loop` of
`num_steps` steps (a tensor, so it is traced once). Per step it does what a
bare XLA loop does and nothing more: the iterator's `get_next`, the loop
counter, and the step. It never breaks on a value the step computed (on a
GPU or TPU that is a device-to-host sync per step): a step that must not be
applied is gated inside the step (`engine.halting`), and the end of the data
ends the loop with TensorFlow's OutOfRangeError, which the host catches.

Several steps per program (`Config.steps_per_program` = K, one replica under
XLA, batches of a static shape): each iteration of the loop fetches up to K
batches on the host into `TensorArray`s and launches one XLA program that
runs them as an XLA while loop over the stacked batches. Launching a
program costs more than a small model's step (the arguments, the variables
it touches, the executor): on this project's CPU a bare loop of the same
step ran 1.26-1.46x as fast with K = 10 (BENCHMARKS.md). The fetches are
optional, so a dataset that ends inside a group still trains every batch
it gave, and the program applies only the steps it got (also when a loop's
length is not a multiple of K; the slots left are zeros, run as steps that
apply nothing, so that XLA's while loop has a known trip count): one
program, whatever the count. The iterator's `has_value` is a host value, so the
conditionals around the fetches wait for nothing the device computes.

Where XLA applies:
- one replica: the whole replica step (checks, forward, backward, update,
  measurements) is one XLA program;
- several replicas on CPUs or GPUs (MirroredStrategy, MultiWorkerMirrored):
  XLA compiles `engine.step.gradients`, a pure function of the variables'
  values; the all-reduces and the update run in the replica function,
  outside XLA: XLA cannot update a MirroredVariable from a replica, nor
  all-reduce on CPU (BUILD.md);
- TPUStrategy compiles everything inside `strategy.run` for the TPU anyway.
"""

import functools

import tensorflow as tf


class Loops:
  """The train and eval loops of one Trainer over its `ReplicaStep`.

  `report` (no arguments; tensors) is what the host reads after a training
  loop (`engine.reporting.report`): the loop's call returns it, so a loop is
  one host call, its report included.
  """

  def __init__(self, strategy, replica_step, jit_compile: bool, trace_counts, report,
               steps_per_program: int = 1, steps_per_loop: int = 1):
    self._strategy = strategy
    self._trace_counts = trace_counts
    self._report = report
    fused = strategy.num_replicas_in_sync == 1
    # Several steps in one program need that program to be one XLA computation;
    # more slots than a loop's steps would be steps that apply nothing.
    self._steps_per_program = (min(steps_per_program, steps_per_loop) if fused and jit_compile
                               else 1)
    def compiled(function):
      # autograph=False everywhere: the loops are explicit `tf.while_loop`s,
      # and converting every function a step calls cost seconds per trace.
      return (tf.function(function, jit_compile=jit_compile, autograph=False) if fused
              else function)
    self._train_step = compiled(functools.partial(replica_step.train, diagnostics=False))
    self._train_steps = compiled(functools.partial(_steps, self._steps_per_program,
                                                   replica_step.train))
    self._diagnostic_step = compiled(functools.partial(replica_step.train, diagnostics=True))
    self._eval_step = compiled(replica_step.evaluate)
    self.train_function = tf.function(functools.partial(self._train_loop_fn, diagnostics=False),
                                      autograph=False)
    # The loop's last step with the per-head diagnostics: traced and compiled when first used.
    self.diagnostic_function = tf.function(
        functools.partial(self._train_loop_fn, diagnostics=True), autograph=False)
    self.eval_function = tf.function(self._eval_loop_fn, autograph=False)

  def train(self, iterator, num_steps: int, diagnostics: bool = False):
    """Runs `num_steps` steps, the last with diagnostics if asked; returns the loop's
    report (tensors), or None if the data ended before the last step."""
    function = self.diagnostic_function if diagnostics else self.train_function
    try:
      return function(iterator, tf.constant(num_steps, tf.int32))
    except tf.errors.OutOfRangeError:
      return None

  def evaluate(self, iterator, steps, steps_per_loop: int) -> int:
    """Evaluates `steps` batches (None: until the data ends), `steps_per_loop` per
    compiled call; returns how many batches there were."""
    evaluated = 0
    while steps is None or evaluated < steps:
      num_steps = steps_per_loop if steps is None else min(steps_per_loop, steps - evaluated)
      done = int(self.eval_function(iterator, tf.constant(num_steps, tf.int32)))
      evaluated += done
      if done < num_steps:
        break
    return evaluated

  def steps_per_program(self, element_spec) -> int:
    """K for batches of `element_spec`: 1 unless every part has a static shape (the
    K batches are stacked into one tensor per part)."""
    static = all(isinstance(spec, tf.TensorSpec) and spec.shape.is_fully_defined()
                 and (spec.dtype.is_floating or spec.dtype.is_integer or spec.dtype.is_bool)
                 for spec in tf.nest.flatten(element_spec))
    return self._steps_per_program if static else 1

  def _train_loop_fn(self, iterator, num_steps, diagnostics):
    self._trace_counts["diagnostic_loop" if diagnostics else "train_loop"] += 1
    plain_steps = num_steps - 1 if diagnostics else num_steps
    group = self.steps_per_program(iterator.element_spec)
    if group == 1:
      def body(i):
        self._strategy.run(self._train_step, args=(iterator.get_next(),))
        return (i + 1,)
    else:
      def body(i):
        count = tf.minimum(plain_steps - i, group)
        got, stacked = _fetch(iterator, count, group)
        done = self._strategy.run(self._train_steps, args=(stacked, got))
        # The data ended inside this group: end the loop as a single step would
        # (OutOfRangeError, from the spent iterator), its batches trained.
        with tf.control_dependencies([done]):
          ended = tf.cond(got < count, lambda: _raise_out_of_range(iterator),
                          lambda: tf.constant(False))
        with tf.control_dependencies([ended]):
          return (i + got,)
    tf.while_loop(lambda i: i < plain_steps, body, (tf.constant(0),))
    if diagnostics:
      self._strategy.run(self._diagnostic_step, args=(iterator.get_next(),))
    return self._report()

  def _eval_loop_fn(self, iterator, num_steps):
    # Evaluation ends where its data ends, so it asks the iterator (a host
    # value, no sync with the device) whether a batch is left.
    self._trace_counts["eval_loop"] += 1
    def body(i, _):
      element = iterator.get_next_as_optional()
      def run():
        self._strategy.run(self._eval_step, args=(element.get_value(),))
        return i + 1, tf.constant(True)
      return tf.cond(element.has_value(), run, lambda: (i, tf.constant(False)))
    done, _ = tf.while_loop(lambda i, more: more & (i < num_steps), body,
                            (tf.constant(0), tf.constant(True)))
    return done


def _steps(group, train_step, stacked, count):
  """The first `count` of `group` stacked batches trained, in one program.

  The XLA while loop runs all `group` slots, the slots past `count` as steps
  that apply nothing: a loop of known trip count runs on a GPU without
  reading its condition back to the host each iteration (XLA's GPU while
  thunk copies a computed predicate to the host every trip).
  """
  def body(k):
    train_step(tf.nest.map_structure(lambda part: part[k], stacked), present=k < count)
    return (k + 1,)
  return tf.while_loop(lambda k: k < group, body, (tf.constant(0),))[0]


def _fetch(iterator, count, group):
  """(n, batches stacked [group, ...]): the next n <= `count` batches, n < `count` only
  if the data ended; the `group - n` slots left are zeros."""
  specs = tf.nest.flatten(iterator.element_spec)
  arrays = [tf.TensorArray(spec.dtype, size=group, element_shape=spec.shape) for spec in specs]
  def body(k, more, arrays):
    optional = iterator.get_next_as_optional()
    def write():
      values = tf.nest.flatten(optional.get_value())
      return [array.write(k, value) for array, value in zip(arrays, values)]
    arrays = tf.cond(optional.has_value(), write, lambda: arrays)
    return k + tf.cast(optional.has_value(), tf.int32), optional.has_value(), arrays
  got, _, arrays = tf.while_loop(lambda k, more, _: more & (k < count), body,
                                 (tf.constant(0), tf.constant(True), arrays))
  return got, tf.nest.pack_sequence_as(iterator.element_spec,
                                       [array.stack() for array in arrays])


def _raise_out_of_range(iterator):
  with tf.control_dependencies(tf.nest.flatten(iterator.get_next())):
    return tf.constant(True)
