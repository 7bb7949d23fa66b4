"""Temperature scaling (Guo et al., ICML 2017): one temperature per classification head.

A temperature T divides a head's logits before its softmax. It does not
change the predicted class, only the confidence; fitting it by minimising
the negative log-likelihood on held-out data makes over-confident models
calibrated. The NLL is convex in the inverse temperature b = 1/T, with
gradient E_p[z] - E_t[z] and curvature Var_p[z] averaged over examples (p
the model's distribution at b, t the target), so a safeguarded Newton
iteration finds the exact minimum in a few steps, in float64.
"""

import keras
import numpy as np
import tensorflow as tf

TEMPERATURE_RANGE = (1e-2, 1e2)  # A separable held-out set would push T to 0.


def calibratable(heads) -> list:
  """The heads that have a temperature to fit (SoftmaxHead)."""
  return [head for head in heads if isinstance(getattr(head, "temperature", None),
                                                 keras.Variable)]


def fit_temperature(logits, targets, weights=None, max_iterations=100) -> float:
  """The T > 0 minimising the weighted mean NLL of softmax(logits / T).

  Args:
    logits: [N, C] raw logits (the current temperature not applied).
    targets: [N, C] target distributions (one-hot for class ids).
    weights: [N] example weights (0: no label), or None.
  """
  z = np.asarray(logits, np.float64)
  t = np.asarray(targets, np.float64)
  w = np.ones(len(z)) if weights is None else np.asarray(weights, np.float64)
  w = w / w.sum()
  target_logit = np.sum(t * z, axis=1)

  def nll_and_derivatives(b):
    scaled = b * z
    top = scaled.max(axis=1, keepdims=True)
    p = np.exp(scaled - top)
    normaliser = p.sum(axis=1, keepdims=True)
    p /= normaliser
    log_sum_exp = top[:, 0] + np.log(normaliser[:, 0])
    mean_z = np.sum(p * z, axis=1)
    nll = np.sum(w * (log_sum_exp - b * target_logit))
    gradient = np.sum(w * (mean_z - target_logit))
    curvature = np.sum(w * (np.sum(p * z * z, axis=1) - mean_z ** 2))
    return nll, gradient, curvature

  low, high = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]
  b = 1.0
  nll, gradient, curvature = nll_and_derivatives(b)
  for _ in range(max_iterations):
    if abs(gradient) < 1e-12 or curvature <= 0:
      break
    candidate = float(np.clip(b - gradient / curvature, low, high))
    candidate_nll, candidate_gradient, candidate_curvature = nll_and_derivatives(candidate)
    while candidate_nll > nll + 1e-15 and abs(candidate - b) > 1e-12:  # Halve the step.
      candidate = (b + candidate) / 2
      candidate_nll, candidate_gradient, candidate_curvature = nll_and_derivatives(candidate)
    converged = abs(candidate - b) <= 1e-10 * b
    b, nll, gradient, curvature = candidate, candidate_nll, candidate_gradient, \
        candidate_curvature
    if converged:
      break
  return 1.0 / b


def collect(model, heads, dataset, steps=None) -> dict:
  """{head: (logits [N, C], targets [N, C], weights [N])} over `dataset`, as NumPy."""
  forward = tf.function(lambda features: model(features, training=False))
  collected = {head.name: ([], [], []) for head in heads}
  for index, element in enumerate(dataset):
    if steps is not None and index >= steps:
      break
    features, labels = element[:2]
    weights = element[2] if len(element) == 3 else {}
    logits = forward(features)
    for head in heads:
      label = tf.convert_to_tensor(labels[head.name])
      example_weights = head.example_weights(label, weights.get(head.name))
      if label.dtype.is_integer:  # Absent labels (weight 0) may hold any id.
        label = tf.one_hot(tf.where(example_weights > 0, label, tf.zeros_like(label)),
                           head.num_classes)
      for values, value in zip(collected[head.name],
                               (tf.cast(logits[head.name], tf.float32), label,
                                example_weights)):
        values.append(value.numpy())
  if not heads or not collected[heads[0].name][0]:
    raise ValueError("The calibration dataset is empty: it produced no batch.")
  return {name: tuple(np.concatenate(parts) for parts in values)
          for name, values in collected.items()}


def calibrate(model, heads, dataset, steps=None) -> dict:
  """Fits and assigns the temperature of every calibratable head; returns {head: T}."""
  heads = calibratable(heads)
  if not heads:
    return {}
  temperatures = {}
  collected = collect(model, heads, dataset, steps)  # One pass for all heads.
  for head in heads:
    temperature = fit_temperature(*collected[head.name])
    head.temperature.assign(temperature)
    temperatures[head.name] = temperature
  return temperatures


def report(before: dict, after: dict, temperatures: dict) -> str:
  """A table of each calibrated head's temperature, ECE and NLL before and after."""
  rows = [("head", "temperature", "ece_before", "ece_after", "nll_before", "nll_after")]
  for name, temperature in temperatures.items():
    rows.append((name, f"{temperature:.4f}", f"{before[f'{name}/ece']:.4f}",
                 f"{after[f'{name}/ece']:.4f}", f"{before[f'{name}/nll']:.4f}",
                 f"{after[f'{name}/nll']:.4f}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                   for row in rows)
