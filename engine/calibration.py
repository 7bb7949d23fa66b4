"""Post-hoc calibration: fit a map of each head's logits on held-out data, keep it in the head.

Methods (`METHODS`), each fitted by minimising the held-out NLL exactly
(`engine.calibration_fits`):
- "temperature": one temperature per softmax head (Guo et al., 2017); never
  changes the predicted class.
- "vector": a scale and a bias per class of each softmax head (vector
  scaling, Guo et al., 2017); can change the predicted class.
- "platt": a scale and a bias per label of each sigmoid head (Platt, 1999).

The fitted values go into the head's variables (`temperature`,
`calibration_scale`, `calibration_bias`), so they are checkpointed,
applied once in `predict`, in the evaluation's metrics and in exports. A
method replaces what an earlier one fitted on the same heads; methods for
other heads (temperature, then platt) add up.
"""

import numpy as np
import tensorflow as tf

from engine import iterators
from engine.calibration_fits import fit_platt, fit_temperature, fit_vector_scaling
import heads as heads_lib

METHODS = ("temperature", "vector", "platt")
# What `report` prints before and after, when the evaluation has it.
REPORTED = ("ece", "adaptive_ece", "classwise_ece", "mce", "brier", "nll")


def calibratable(heads, method: str = "temperature") -> list:
  """The heads that `method` fits: softmax heads (temperature, vector), sigmoid heads (platt)."""
  kind = heads_lib.SigmoidHead if method == "platt" else heads_lib.SoftmaxHead
  return [head for head in heads if isinstance(head, kind)]


def collect(model, heads, dataset, steps=None) -> dict:
  """{head: (logits [N, C], targets [N, C], weights [N])} over `dataset`, as NumPy.

  Targets are one-hot for softmax heads' class ids, the 0/1 labels for
  sigmoid heads. The logits are raw: no calibration applied.
  """
  forward = tf.function(lambda features: model(features, training=False))
  collected = {head.name: ([], [], []) for head in heads}
  holder = [iter(dataset)]  # Released below: destroying it may wait on tf.data's autotuner.
  for index, element in enumerate(holder[0]):
    if steps is not None and index >= steps:
      break
    features, labels = element[:2]
    weights = element[2] if len(element) == 3 else {}
    logits = forward(features)
    for head in heads:
      label = tf.convert_to_tensor(labels[head.name])
      example_weights = head.example_weights(label, weights.get(head.name))
      if isinstance(head, heads_lib.SigmoidHead):
        label = tf.cast(label, tf.float32)
      elif label.dtype.is_integer:  # Absent labels (weight 0) may hold any id.
        label = tf.one_hot(tf.where(example_weights > 0, label, tf.zeros_like(label)),
                           head.num_classes)
      for values, value in zip(collected[head.name],
                               (tf.cast(logits[head.name], tf.float32), label,
                                example_weights)):
        values.append(value.numpy())
  iterators.release(holder)
  if not heads or not collected[heads[0].name][0]:
    raise ValueError("The calibration dataset is empty: it produced no batch.")
  return {name: tuple(np.concatenate(parts) for parts in values)
          for name, values in collected.items()}


def _assign(head, temperature=1.0, scale=None, bias=None):
  if hasattr(head, "temperature"):
    head.temperature.assign(temperature)
  size = head.calibration_scale.shape[0]
  head.calibration_scale.assign(np.ones(size) if scale is None else scale)
  head.calibration_bias.assign(np.zeros(size) if bias is None else bias)


def calibrate(model, heads, dataset, steps=None, method: str = "temperature") -> dict:
  """Fits `method` for every head it applies to and assigns it; returns {head: fitted}.

  `fitted` is {"temperature": T} or {"scale": [C], "bias": [C]}.
  """
  if method not in METHODS:
    raise ValueError(f"calibration method must be one of {METHODS}; received {method!r}.")
  heads = calibratable(heads, method)
  if not heads:
    return {}
  collected = collect(model, heads, dataset, steps)  # One pass for all heads.
  fitted = {}
  for head in heads:
    logits, targets, weights = collected[head.name]
    if method == "temperature":
      temperature = fit_temperature(logits, targets, weights)
      _assign(head, temperature=temperature)
      fitted[head.name] = {"temperature": temperature}
    else:
      fit = fit_vector_scaling if method == "vector" else fit_platt
      scale, bias = fit(logits, targets, weights)
      _assign(head, scale=scale, bias=bias)
      fitted[head.name] = {"scale": scale, "bias": bias}
  return fitted


def _describe(fitted: dict) -> str:
  if "temperature" in fitted:
    return f"temperature {fitted['temperature']:.4f}"
  scale, bias = fitted["scale"], fitted["bias"]
  return (f"scale {np.min(scale):.3f}..{np.max(scale):.3f}, "
          f"bias {np.min(bias):.3f}..{np.max(bias):.3f}")


def report(before: dict, after: dict, fitted: dict) -> str:
  """A table, per calibrated head, of what was fitted and every calibration metric
  (and the NLL) before and after."""
  rows = [("head", "metric", "before", "after")]
  for name, values in fitted.items():
    rows.append((name, "fitted", _describe(values), ""))
    for metric in REPORTED + ("accuracy",):
      key = f"{name}/{metric}"
      if key in before and key in after:
        rows.append((name, metric, f"{before[key]:.4f}", f"{after[key]:.4f}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                   for row in rows)
