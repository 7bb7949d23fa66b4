"""Gradient aggregators for multi-task learning: pure functions, run inside the compiled step.

`aggregate(method, matrix, **options)`: `matrix` is the [heads, n] float32
matrix of the heads' gradients on the shared parameters (flattened, each
head's loss weight applied), the result the [n] update direction. Every
method works on the [heads, heads] Gram matrix M = G G^T where it can, so
its solver costs O(heads^2) per iteration beside the O(heads^2 n) products;
the small solvers are fixed-iteration loops (`tf.while_loop`), XLA-safe, in
float32 (TPUs have no float64), on M scaled to unit trace.

Scales (BUILD.md has the derivations and the closed forms the tests use):
- `mean`: (1/K) sum_i g_i.
- `pcgrad` (Yu et al. 2020): each g_i loses its component along every g_j
  it conflicts with (g_i . g_j < 0), in a random order per step; the MEAN
  of the projected gradients (the paper sums them; the mean keeps the step
  size of `mean`, which it equals on non-conflicting gradients).
- `mgda` (Sener & Koltun 2018): the minimum-norm point of the convex hull
  of the g_i, sum_i a_i g_i with a on the simplex (no normalisation).
- `upgrad` (Quinton & Rey 2024): the mean over i of the projection of g_i
  onto the dual cone {x : G x >= 0}, i.e. G^T mean_i(w_i) with
  w_i = argmin_{w >= e_i} w^T M w.
- `cagrad` (Liu et al. 2021, option `c`, default 0.4): g0 + (sqrt(phi) /
  |g_w|) g_w, g0 the mean, phi = c^2 |g0|^2, w = argmin_{simplex} w^T G g0
  + sqrt(phi) |G^T w|; divided by 1 + c^2, as the authors' code does.
- `nash_mtl` (Navon et al. 2022): G^T a with a > 0 solving M a = 1 / a (the
  Nash bargaining solution), as the minimum of the strictly convex
  1/2 a^T M a - sum log a_i (damped Newton), with a 1e-6 ridge relative to
  each head's |g_i|^2 (opposed gradients have no finite solution) and
  1e-12 trace(M) absolute, so a zero gradient gets a finite a_i and adds
  nothing.
- `imtl_g` (Liu et al. 2021): sum_i a_i g_i with sum a_i = 1 and equal
  projections on every unit gradient u_i (a linear system; a head with a
  zero gradient is left out, a_i = 0).
- `aligned_mtl` (Senushkin et al. 2023): the rows of G with their singular
  values all set to the smallest non-zero one, summed: 1^T B G with
  B = sigma_min V L^-1/2 V^T (M = V L V^T), as the paper and LibMTL do
  (with LibMTL's rank tolerance: in float32, singular values below ~3e-4
  of the largest count as zero).

Solver tolerances (tested in tests/test_aggregation.py): MGDA and UPGrad are
exact (every active set, one batched solve) up to `EXACT_HEADS` heads, else
`SIMPLEX_ITERATIONS` accelerated projected-gradient steps (MGDA) or
`UPGRAD_SWEEPS` sweeps of exact coordinate descent (UPGrad); CAGrad runs
`SIMPLEX_ITERATIONS` accelerated projected-gradient steps; Nash-MTL `NASH_STEPS`
damped Newton steps; on the tests' matrices their weights are within 1e-4
of the closed forms and the dual-cone conditions hold to 1e-4 max |g_i|^2
(float32 on a unit-trace Gram matrix; with more heads than dimensions it
is singular, and that is the error seen).
"""

import tensorflow as tf

METHODS = ("mean", "pcgrad", "mgda", "upgrad", "cagrad", "nash_mtl", "imtl_g", "aligned_mtl")
SIMPLEX_ITERATIONS = 300
UPGRAD_SWEEPS = 200
EXACT_HEADS = 8  # MGDA and UPGrad enumerate 2^K active sets, each a K x K solve.
NASH_STEPS = 50
_TINY = 1e-12


def aggregate(method: str, matrix, **options):
  """The [n] update direction from the [heads, n] per-head gradients (see the module doc).

  Options: `seed` (an integer tensor, e.g. the step: PCGrad's random order)
  and `c` (CAGrad, >= 0). Unknown methods or options raise ValueError.
  """
  _check(method, options)
  return _AGGREGATORS[method](tf.convert_to_tensor(matrix, tf.float32), **options)


OPTIONS = {"pcgrad": ("seed",), "cagrad": ("c",)}


def _check(method, options):
  if method not in METHODS:
    raise ValueError(f"aggregation must be one of {METHODS}; received {method!r}.")
  allowed = OPTIONS.get(method, ())
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"aggregation {method!r} takes the options {list(allowed)}; "
                     f"received {unknown}.")


def weights(method: str, matrix, **options):
  """The [heads] coefficients a with result = a^T matrix, for the methods that have them
  (all but pcgrad); what TensorBoard shows as each head's effective weight."""
  return aggregate_with_weights(method, matrix, **options)[1]


def aggregate_with_weights(method: str, matrix, **options):
  """(direction [n], coefficients [heads]) in one solve, for every method but pcgrad."""
  _check(method, options)
  if method == "pcgrad":
    raise ValueError("pcgrad's result is no combination of the original gradients.")
  matrix = tf.convert_to_tensor(matrix, tf.float32)
  coefficients = _WEIGHTS[method](_gram(matrix), **options)
  return tf.linalg.matvec(matrix, coefficients, transpose_a=True), coefficients


def _gram(matrix):
  return tf.matmul(matrix, matrix, transpose_b=True)


def _combine(weights_fn):
  def aggregator(matrix, **options):
    return tf.linalg.matvec(matrix, weights_fn(_gram(matrix), **options), transpose_a=True)
  return aggregator


def _unit_trace(gram):
  """M / trace(M) and trace(M): the solvers' inputs are O(1) whatever the gradients' scale."""
  trace = tf.linalg.trace(gram)
  return tf.math.divide_no_nan(gram, trace), trace


def project_to_simplex(vector):
  """The Euclidean projection of a [K] vector onto {a >= 0, sum a = 1} (sort-based)."""
  count = tf.shape(vector)[0]
  ordered = tf.sort(vector, direction="DESCENDING")
  cumulative = tf.cumsum(ordered) - 1.0
  ranks = tf.range(1, count + 1, dtype=vector.dtype)
  support = tf.reduce_sum(tf.cast(ordered - cumulative / ranks > 0, tf.int32))
  threshold = tf.gather(cumulative, support - 1) / tf.cast(support, vector.dtype)
  return tf.maximum(vector - threshold, 0.0)


def _simplex_minimum(gradient_fn, count, lipschitz, iterations=SIMPLEX_ITERATIONS):
  """FISTA on the simplex: `gradient_fn(a)` of a convex function, step 1 / lipschitz(a)."""
  start = tf.fill([count], 1.0 / tf.cast(count, tf.float32))

  def step(i, a, y, t):
    new_a = project_to_simplex(y - gradient_fn(y) / lipschitz(y))
    new_t = (1.0 + tf.sqrt(1.0 + 4.0 * t * t)) / 2.0
    return i + 1, new_a, new_a + (t - 1.0) / new_t * (new_a - a), new_t

  _, a, _, _ = tf.while_loop(lambda i, *_: i < iterations, step,
                             (tf.constant(0), start, start, tf.constant(1.0)))
  return a


def _mean_weights(gram):
  count = tf.shape(gram)[0]
  return tf.fill([count], 1.0 / tf.cast(count, tf.float32))


def _mgda_weights(gram):
  """argmin over the simplex of a^T M a: exact by supports up to `EXACT_HEADS` heads."""
  scaled, _ = _unit_trace(gram)
  count = gram.shape[0]
  if count > EXACT_HEADS:  # Its largest eigenvalue is at most its trace, 1.
    return _simplex_minimum(lambda a: tf.linalg.matvec(scaled, a), count, lambda a: 1.0)
  # Every support S at once: M_S a_S = lambda 1, sum a = 1, a = 0 off S; the answer is
  # the feasible one (a >= 0, (M a)_j >= lambda off S: the KKT conditions) of least value.
  masks = _masks(count)[1:]  # [S, K]; not the empty support.
  free = masks[:, :, tf.newaxis] > 0
  rows = tf.where(free, scaled[tf.newaxis], tf.eye(count)[tf.newaxis])
  rows = tf.concat([rows, -masks[:, :, tf.newaxis]], axis=2)  # -lambda on the support.
  last = tf.broadcast_to(tf.concat([tf.ones([count]), [0.0]], 0)[tf.newaxis, tf.newaxis],
                         [masks.shape[0], 1, count + 1])
  systems = tf.concat([rows, last], axis=1) + 1e-6 * tf.eye(count + 1)
  targets = tf.concat([tf.zeros([masks.shape[0], count]), tf.ones([masks.shape[0], 1])], 1)
  solutions = tf.linalg.solve(systems, targets[..., tf.newaxis])[..., 0]
  a, multiplier = solutions[:, :count], solutions[:, count:]
  gradient = tf.linalg.matvec(scaled, a)
  tolerance = 1e-5
  feasible = tf.reduce_all(a >= -tolerance, axis=1) & tf.reduce_all(
      (masks > 0) | (gradient >= multiplier - tolerance), axis=1)
  values = tf.reduce_sum(a * gradient, axis=1)
  best = tf.argmin(tf.where(feasible, values, float("inf")))
  return tf.maximum(tf.gather(a, best), 0.0)


def _masks(count):
  """[2^K, K] float32: every subset of the heads, as 0/1 rows."""
  return tf.constant([[(m >> j) & 1 for j in range(count)] for m in range(2 ** count)],
                     tf.float32)


def _upgrad_weights(gram):
  """mean_i argmin_{w >= e_i} w^T M w: exact by active sets up to `EXACT_HEADS` heads,
  else by cyclic exact coordinate descent (`UPGRAD_SWEEPS` sweeps)."""
  scaled, _ = _unit_trace(gram)
  count = gram.shape[0]
  if count <= EXACT_HEADS:
    return tf.reduce_mean(_lower_bounded_minimum(scaled, tf.eye(count)), axis=0)
  bounds = tf.eye(count)
  diagonal = tf.linalg.diag_part(scaled)

  def sweep(s, rows):
    for j in range(count):  # Heads are few: the sweep is unrolled.
      column = tf.linalg.matvec(rows, scaled[:, j])
      moved = rows[:, j] - tf.math.divide_no_nan(column, diagonal[j])
      rows = tf.concat([rows[:, :j], tf.maximum(bounds[:, j], moved)[:, tf.newaxis],
                        rows[:, j + 1:]], axis=1)
    return s + 1, rows

  _, rows = tf.while_loop(lambda s, _: s < UPGRAD_SWEEPS, sweep, (tf.constant(0), bounds))
  return tf.reduce_mean(rows, axis=0)


def _lower_bounded_minimum(gram, lower):
  """For each row b of `lower` [R, K]: argmin_{w >= b} w^T M w, exactly.

  Every active set (2^K of them) at once: heads free to move solve M_F w = 0 on
  their rows, the others sit at their bound; the answer is the feasible
  candidate (w >= b, and M w >= 0 where w sits at b: the KKT conditions) of
  least value. A tiny ridge keeps singular systems solvable; their spurious
  solutions fail the checks or cost more.
  """
  count = gram.shape[0]
  masks = _masks(count)  # [S, K], 1: free.
  free = masks[:, :, tf.newaxis] > 0  # [S, K, 1]
  systems = tf.where(free, gram[tf.newaxis], tf.eye(count)[tf.newaxis])  # [S, K, K]
  systems += 1e-6 * tf.eye(count)
  targets = tf.where(masks[tf.newaxis] > 0, 0.0, lower[:, tf.newaxis, :])  # [R, S, K]
  solutions = tf.linalg.solve(
      tf.broadcast_to(systems[tf.newaxis], [lower.shape[0], *systems.shape]),
      targets[..., tf.newaxis])[..., 0]  # [R, S, K]
  gradients = tf.einsum("rsk,kj->rsj", solutions, gram)
  tolerance = 1e-5
  feasible = tf.reduce_all(solutions >= lower[:, tf.newaxis, :] - tolerance, axis=-1)
  feasible &= tf.reduce_all((masks[tf.newaxis] > 0) | (gradients >= -tolerance), axis=-1)
  values = tf.reduce_sum(solutions * gradients, axis=-1)
  best = tf.argmin(tf.where(feasible, values, float("inf")), axis=1)
  return tf.gather(solutions, best, axis=1, batch_dims=1)


def _cagrad_weights(gram, c=0.4):
  if not c >= 0:
    raise ValueError(f"cagrad option c must be >= 0; received {c!r}.")
  scaled, _ = _unit_trace(gram)
  count = tf.shape(gram)[0]
  mean = _mean_weights(gram)
  mean_norm = tf.sqrt(tf.maximum(tf.reduce_sum(mean * tf.linalg.matvec(scaled, mean)), 0.0))
  radius = c * mean_norm  # sqrt(phi), in the unit-trace scale.
  linear = tf.linalg.matvec(scaled, mean)  # G g0.

  def norm_of(w):
    return tf.sqrt(tf.maximum(tf.reduce_sum(w * tf.linalg.matvec(scaled, w)), 0.0))

  def gradient(w):
    return linear + radius * tf.linalg.matvec(scaled, w) / tf.maximum(norm_of(w), 1e-6)

  # The gradient's local Lipschitz constant: |M| <= 1, the norm term's curvature ~ 1/|g_w|.
  w = _simplex_minimum(gradient, count,
                       lambda w: 1.0 + radius / tf.maximum(norm_of(w), 1e-3))
  # d = g0 + radius / |g_w| g_w, divided by 1 + c^2: as weights on the g_i.
  return (mean + tf.math.divide_no_nan(radius, norm_of(w)) * w) / (1.0 + c * c)


def _nash_weights(gram):
  """a > 0 with (M a)_i = 1 / a_i: the minimum of 1/2 a^T M a - sum log a (damped Newton)."""
  scaled, trace = _unit_trace(gram)
  count = gram.shape[0]
  # Opposed or zero gradients have no finite solution: a ridge relative to each head's
  # own scale (and a tiny absolute one, for zero gradients) keeps a finite.
  scaled += tf.linalg.diag(1e-6 * tf.linalg.diag_part(scaled) + 1e-12)

  def newton(s, a):
    gradient = tf.linalg.matvec(scaled, a) - 1.0 / a
    hessian = scaled + tf.linalg.diag(1.0 / (a * a))
    hessian += 1e-7 * tf.linalg.trace(hessian) / count * tf.eye(count)  # Float32 safety.
    direction = tf.linalg.solve(hessian, gradient[:, tf.newaxis])[:, 0]
    # The largest step keeping a > 0 (with a margin), at most the full Newton step.
    ratios = tf.where(direction > 0, 0.9 * a / tf.maximum(direction, _TINY), 1.0)
    return s + 1, a - tf.minimum(1.0, tf.reduce_min(ratios)) * direction

  _, a = tf.while_loop(lambda s, _: s < NASH_STEPS, newton,
                       (tf.constant(0), tf.ones([count])))
  return a / tf.sqrt(tf.maximum(trace, _TINY))  # Back to the gradients' scale.


def _imtl_g_weights(gram):
  """sum a = 1 and equal projections t = u_i . (G^T a) on every non-zero head's unit
  gradient u_i; a head with a zero gradient has no direction: its a_i is 0.

  One (K + 1) x (K + 1) linear system in (a, t), solved by pseudo-inverse (with more
  heads than dimensions the projections cannot all be equal: the least-squares a).
  """
  count = gram.shape[0]
  norms = tf.sqrt(tf.maximum(tf.linalg.diag_part(gram), 0.0))
  present = norms > _TINY * tf.reduce_max(norms) + _TINY
  inverse = tf.where(present, 1.0 / tf.maximum(norms, _TINY), 0.0)
  projections = tf.concat([gram * inverse[:, tf.newaxis], -tf.ones([count, 1])], axis=1)
  absent = tf.concat([tf.eye(count), tf.zeros([count, 1])], axis=1)
  rows = tf.where(present[:, tf.newaxis], projections, absent)
  system = tf.concat([rows, tf.concat([tf.ones([1, count]), tf.zeros([1, 1])], axis=1)], 0)
  target = tf.concat([tf.zeros([count]), [1.0]], axis=0)
  return tf.linalg.matvec(tf.linalg.pinv(system), target)[:count]


def _aligned_weights(gram):
  """1^T B, B = sigma_min V L^-1/2 V^T over the non-zero eigenvalues of M."""
  values, vectors = tf.linalg.eigh(gram)
  # LibMTL's rank tolerance, in float32: a singular value below ~3e-4 of the largest is 0.
  tolerance = tf.reduce_max(values) * tf.cast(tf.shape(gram)[0], tf.float32) * 1.2e-7
  kept = values > tolerance
  smallest = tf.reduce_min(tf.where(kept, values, tf.reduce_max(values)))
  inverse_root = tf.where(kept, tf.math.rsqrt(tf.maximum(values, _TINY)), 0.0)
  basis = tf.matmul(vectors * inverse_root, vectors, transpose_b=True)
  return tf.sqrt(tf.maximum(smallest, 0.0)) * tf.reduce_sum(basis, axis=0)


def _pcgrad(matrix, seed=0):
  return pcgrad_sum(matrix, seed) / tf.cast(tf.shape(matrix)[0], tf.float32)


def pcgrad_sum(head_gradients, seed):
  """PCGrad (Yu et al., NeurIPS 2020): the SUM of the heads' projected gradients, as in
  the paper (`aggregate("pcgrad", ...)` is their mean).

  Args:
    head_gradients: [heads, parameters], each head's gradient on the shared
      parameters, flattened.
    seed: an integer tensor (the step) for the random order: each head's
      gradient is projected against the others' original gradients in a
      fresh random order, as in the paper.

  Where g_i . g_j < 0, g_i loses its component along g_j:
  g_i <- g_i - (g_i . g_j) / |g_j|^2 g_j.
  """
  count = head_gradients.shape[0]
  projected = []
  for i in range(count):
    gradient = head_gradients[i]
    order = tf.argsort(_hash_keys(seed, i, count))
    for position in range(count):
      j = order[position]
      other = tf.gather(head_gradients, j)
      dot = tf.reduce_sum(gradient * other)
      conflict = tf.logical_and(tf.not_equal(j, i), dot < 0)
      step = tf.math.divide_no_nan(dot, tf.reduce_sum(other * other))
      gradient = tf.where(conflict, gradient - step * other, gradient)
    projected.append(gradient)
  return tf.add_n(projected)


def _hash_keys(seed, head, count):
  """`count` pseudo-random int64 keys from (seed, head), the same in and out of XLA.

  TensorFlow's stateless random ops give different numbers under XLA than
  outside it (measured in TF 2.21, even with alg="philox"), so one device
  (whole step in XLA) and several replicas (PCGrad outside XLA) would
  project in different orders. A multiplicative hash in int64 arithmetic
  (the murmur3 finaliser's constants) gives the same keys everywhere.
  """
  mask = tf.constant((1 << 32) - 1, tf.int64)
  x = tf.bitwise.bitwise_and(tf.cast(seed, tf.int64) * 2654435761 + head * 40503
                             + tf.range(count, dtype=tf.int64) * 2246822519, mask)
  for shift, factor in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
    mixed = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(shift, tf.int64)))
    x = tf.bitwise.bitwise_and(mixed * factor, mask)
  return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.int64)))


_WEIGHTS = {"mean": _mean_weights, "mgda": _mgda_weights, "upgrad": _upgrad_weights,
            "cagrad": _cagrad_weights, "nash_mtl": _nash_weights, "imtl_g": _imtl_g_weights,
            "aligned_mtl": _aligned_weights}
_AGGREGATORS = {"pcgrad": _pcgrad, **{name: _combine(fn) for name, fn in _WEIGHTS.items()}}
