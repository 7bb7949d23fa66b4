"""The compiled loops, and where XLA applies.

A training loop is one `tf.function` holding a `tf.while_loop` of
`num_steps` steps (a tensor, so it is traced once). Per step it does what a
bare XLA loop does and nothing more: the iterator's `get_next`, the loop
counter, and one call of the step. It never breaks on a value the step
computed (on a GPU or TPU that is a device-to-host sync per step): a step
that must not be applied is gated inside the step (`engine.halting`), and
the end of the data ends the loop with TensorFlow's OutOfRangeError, which
the host catches.

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

  def __init__(self, strategy, replica_step, jit_compile: bool, trace_counts, report):
    self._strategy = strategy
    self._trace_counts = trace_counts
    self._report = report
    fused = strategy.num_replicas_in_sync == 1
    def compiled(function):
      # autograph=False everywhere: the loops are explicit `tf.while_loop`s,
      # and converting every function a step calls cost seconds per trace.
      return (tf.function(function, jit_compile=jit_compile, autograph=False) if fused
              else function)
    self._train_step = compiled(functools.partial(replica_step.train, diagnostics=False))
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

  def _train_loop_fn(self, iterator, num_steps, diagnostics):
    self._trace_counts["diagnostic_loop" if diagnostics else "train_loop"] += 1
    def body(i):
      self._strategy.run(self._train_step, args=(iterator.get_next(),))
      return (i + 1,)
    plain_steps = num_steps - 1 if diagnostics else num_steps
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
