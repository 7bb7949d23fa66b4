"""engine.gated_writes against Keras's own, ungated `apply`, under XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine import gated_writes

OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(0.1),
    "adamw": lambda: keras.optimizers.AdamW(0.1, weight_decay=0.3),  # Writes directly.
    "sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.1, momentum=0.5),
    "lion": lambda: keras.optimizers.Lion(0.1),
    "adam_ema": lambda: keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.5),
}


def _setup(make_optimizer):
  keras.utils.set_random_seed(0)
  variables = [keras.Variable(np.random.normal(size=shape).astype(np.float32))
               for shape in ((3, 4), (4,))]
  optimizer = make_optimizer()
  optimizer.build(variables)
  return variables, optimizer


def _state(variables, optimizer):
  return [np.array(v.numpy()) for v in [*variables, *optimizer.variables]]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_gated_apply_equals_keras_apply_or_writes_nothing(name):
  gradients = [tf.constant(np.random.default_rng(1).normal(size=shape), tf.float32)
               for shape in ((3, 4), (4,))]
  plain_vars, plain_opt = _setup(OPTIMIZERS[name])
  gated_vars, gated_opt = _setup(OPTIMIZERS[name])

  plain = tf.function(lambda: plain_opt.apply(gradients, plain_vars), jit_compile=True)
  @tf.function(jit_compile=True)
  def gated(applied):
    gated_writes.apply(gated_opt, lambda: gated_opt.apply(gradients, gated_vars),
                       [*gated_vars, *gated_opt.variables], applied)

  for applied in (True, False, True, True, False):
    before = _state(gated_vars, gated_opt)
    gated(tf.constant(applied))
    after = _state(gated_vars, gated_opt)
    if applied:
      plain()
      for expected, value in zip(_state(plain_vars, plain_opt), after):
        np.testing.assert_array_equal(value, expected)
      assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    else:
      for expected, value in zip(before, after):
        np.testing.assert_array_equal(value, expected)
  # The methods replaced for the call are the class's again.
  assert "assign" not in vars(gated_opt)


def test_gated_adam_copies_no_weight_or_slot():
  """The reason for the module: snapshot-and-select makes XLA copy every slot
  before Adam overwrites it in place; the gated writes copy none (only the
  int64 iteration counter, which Keras writes directly, is snapshotted)."""
  variables, optimizer = _setup(OPTIMIZERS["adam"])
  gradients = [tf.ones_like(v.value) for v in variables]
  @tf.function(jit_compile=True)
  def gated(applied):
    gated_writes.apply(optimizer, lambda: optimizer.apply(gradients, variables),
                       [*variables, *optimizer.variables], applied)
  hlo = gated.experimental_get_compiler_ir(tf.constant(True))(stage="optimized_hlo")
  entry = hlo[hlo.index("ENTRY"):]
  copies = [line.strip() for line in entry.splitlines() if " copy(" in line]
  assert copies and all(" s64[] copy(" in line for line in copies), copies
