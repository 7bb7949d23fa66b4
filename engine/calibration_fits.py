"""The calibration maps' fits: exact NLL minima on held-out logits, in NumPy float64.

- Temperature scaling (Guo et al., ICML 2017): softmax(z / T). The NLL is
  convex in b = 1/T, with gradient E_p[z] - E_t[z] and curvature Var_p[z]
  averaged over examples (p the model's distribution at b, t the target).
- Vector scaling (Guo et al. 2017, section 4.2): softmax(a * z + c), a scale
  and a bias per class. The logits are linear in (a, c), so the NLL is
  convex in them; the Hessian is a 2C x 2C matrix built from [N, C] sums.
  The biases are defined up to a common shift (softmax ignores it): a ridge
  of `RIDGE` on every parameter's distance from the identity map fixes it.
- Platt scaling (Platt 1999), per label of a sigmoid head: sigmoid(a z + c)
  against Platt's smoothed targets (N+ + 1) / (N+ + 2) for positives and
  1 / (N- + 2) for negatives, which keep a separable label from driving a
  to infinity; a 2 x 2 Newton system per label, all labels at once.

Each is a safeguarded Newton iteration (the step halved until the NLL does
not rise), converging in a few steps to the exact minimum.
"""

import numpy as np

TEMPERATURE_RANGE = (1e-2, 1e2)  # A separable held-out set would push T to 0.
RIDGE = 1e-6  # On the vector-scaling parameters: fixes the biases' common shift.
_MAX_ITERATIONS = 100


def _normalised(weights, count):
  w = np.ones(count) if weights is None else np.asarray(weights, np.float64)
  return w / w.sum()


def _newton(objective, start, solve, project=lambda x: x, max_iterations=_MAX_ITERATIONS):
  """Minimises a convex `objective(x) -> (value, gradient, hessian)` from `start`.

  `solve(hessian, gradient)` gives the Newton step, `project` keeps x in its
  domain; the step is halved while the value rises. Stops when a step
  changes x by less than 1e-10 (relative).
  """
  x = np.asarray(start, np.float64)
  value, gradient, hessian = objective(x)
  for _ in range(max_iterations):
    step = solve(hessian, gradient)
    candidate = project(x - step)
    candidate_value, candidate_gradient, candidate_hessian = objective(candidate)
    halvings = 0
    while candidate_value > value + 1e-15 and halvings < 60:
      step = step / 2
      candidate = project(x - step)
      candidate_value, candidate_gradient, candidate_hessian = objective(candidate)
      halvings += 1
    if candidate_value > value + 1e-15:
      break
    converged = np.max(np.abs(candidate - x)) <= 1e-10 * max(1.0, np.max(np.abs(x)))
    x, value, gradient, hessian = candidate, candidate_value, candidate_gradient, \
        candidate_hessian
    if converged:
      break
  return x


def _log_softmax_terms(logits):
  top = logits.max(axis=1, keepdims=True)
  p = np.exp(logits - top)
  normaliser = p.sum(axis=1, keepdims=True)
  return p / normaliser, top[:, 0] + np.log(normaliser[:, 0])


def fit_temperature(logits, targets, weights=None) -> float:
  """The T > 0 minimising the weighted mean NLL of softmax(logits / T).

  Args:
    logits: [N, C] raw logits (no calibration applied).
    targets: [N, C] target distributions (one-hot for class ids).
    weights: [N] example weights (0: no label), or None.
  """
  z = np.asarray(logits, np.float64)
  t = np.asarray(targets, np.float64)
  w = _normalised(weights, len(z))
  target_logit = np.sum(t * z, axis=1)
  low, high = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]

  def objective(b):
    b = float(b[0])
    p, log_sum_exp = _log_softmax_terms(b * z)
    mean_z = np.sum(p * z, axis=1)
    value = np.sum(w * (log_sum_exp - b * target_logit))
    gradient = np.sum(w * (mean_z - target_logit))
    curvature = np.sum(w * (np.sum(p * z * z, axis=1) - mean_z ** 2))
    return value, np.array([gradient]), np.array([[max(curvature, 1e-300)]])

  b = _newton(objective, [1.0], lambda h, g: g / h[0], lambda b: np.clip(b, low, high))
  return 1.0 / float(b[0])


def fit_vector_scaling(logits, targets, weights=None):
  """(scale [C], bias [C]) minimising the weighted mean NLL of softmax(scale * z + bias)."""
  z = np.asarray(logits, np.float64)
  t = np.asarray(targets, np.float64)
  w = _normalised(weights, len(z))
  classes = z.shape[1]
  identity = np.concatenate([np.ones(classes), np.zeros(classes)])

  def objective(x):
    scale, bias = x[:classes], x[classes:]
    p, log_sum_exp = _log_softmax_terms(z * scale + bias)
    ridge = x - identity
    value = np.sum(w * (log_sum_exp - np.sum(t * (z * scale + bias), axis=1)))
    value += 0.5 * RIDGE * np.sum(ridge ** 2)
    residual = w[:, None] * (p - t)
    gradient = np.concatenate([np.sum(residual * z, axis=0), np.sum(residual, axis=0)])
    gradient += RIDGE * ridge
    # Per example the logits' Hessian is diag(p) - p p^T, and d logits / d(scale, bias)
    # = [diag(z), I]: sums over examples of [N, C] products, never [N, C, C].
    zp, wzp, wp = z * p, w[:, None] * z * p, w[:, None] * p
    h_aa = np.diag(np.sum(wzp * z, axis=0)) - wzp.T @ zp
    h_ab = np.diag(np.sum(wzp, axis=0)) - wzp.T @ p
    h_bb = np.diag(np.sum(wp, axis=0)) - wp.T @ p
    hessian = np.block([[h_aa, h_ab], [h_ab.T, h_bb]]) + RIDGE * np.eye(2 * classes)
    return value, gradient, hessian

  x = _newton(objective, identity, np.linalg.solve)
  return x[:classes], x[classes:]


def platt_targets(labels, weights=None):
  """Platt's smoothed targets per label: (N+ + 1) / (N+ + 2) and 1 / (N- + 2)."""
  y = np.asarray(labels, np.float64)
  w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
  positives = np.sum(w[:, None] * y, axis=0)
  negatives = np.sum(w[:, None] * (1 - y), axis=0)
  return np.where(y > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))


def fit_platt(logits, labels, weights=None):
  """(scale [L], bias [L]): per label, the NLL minimum of sigmoid(scale * z + bias)
  against Platt's targets."""
  z = np.asarray(logits, np.float64)
  t = platt_targets(labels, weights)
  w = _normalised(weights, len(z))[:, None]
  num_labels = z.shape[1]

  def objective(x):
    scale, bias = x[:num_labels], x[num_labels:]
    u = z * scale + bias
    value = np.sum(w * (np.logaddexp(0.0, u) - t * u))  # Summed over labels: separable.
    p = 1 / (1 + np.exp(-u))
    residual, curvature = w * (p - t), w * p * (1 - p)
    gradient = np.concatenate([np.sum(residual * z, 0), np.sum(residual, 0)])
    hessian = np.stack([np.sum(curvature * z * z, 0), np.sum(curvature * z, 0),
                        np.sum(curvature, 0)])  # Per label: [[zz, z], [z, 1]].
    return value, gradient, hessian

  def solve(hessian, gradient):
    zz, zo, oo = hessian + np.array([[1e-12], [0.0], [1e-12]])
    ga, gb = gradient[:num_labels], gradient[num_labels:]
    determinant = zz * oo - zo * zo
    return np.concatenate([(oo * ga - zo * gb) / determinant, (zz * gb - zo * ga) / determinant])

  x = _newton(objective, np.concatenate([np.ones(num_labels), np.zeros(num_labels)]), solve)
  return x[:num_labels], x[num_labels:]
