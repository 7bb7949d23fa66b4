"""Precision modes: Keras dtype policies, set before the model is made.

`float32`; `mixed_float16` (layers compute in float16, variables stay
float32, the loss is scaled dynamically); `mixed_bfloat16` (bfloat16 compute,
no loss scaling needed). Heads always compute their normaliser and loss in
float32.
"""

import keras

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def set_precision(name: str):
  """Sets Keras's global dtype policy; layers created afterwards follow it."""
  if name not in PRECISIONS:
    raise ValueError(f"--precision must be one of {PRECISIONS}; received {name!r}.")
  keras.mixed_precision.set_dtype_policy(name)


def check_layers(name: str, layers):
  """Fails if a layer computes in another precision than the run asks for.

  A layer's dtype policy is fixed when it is created, so a trunk made before
  `set_precision` would silently train in float32.
  """
  wrong = [f"{layer.name} ({layer.dtype_policy.name})" for layer in layers
           if layer.dtype_policy.name != name]
  if wrong:
    raise ValueError(
        f"precision={name!r}, but these layers were created with another dtype policy: "
        f"{wrong}. Call engine.set_precision({name!r}) before creating the trunk and heads.")


def loss_scaled(name: str, optimizer):
  """Under mixed_float16, `optimizer` in Keras's LossScaleOptimizer (dynamic scaling)."""
  if name == "mixed_float16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    return keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer
