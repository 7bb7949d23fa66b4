"""How each head's loss enters the total loss: fixed, scheduled or learned.

A head's `weight` is a number (made a `Static`) or one of these objects. The
engine calls, inside the compiled step:

- `weight(head_name, step)` and `regulariser(head_name)`: the head's term in
  the total loss is `weight * loss + regulariser` (the regulariser is 0 but
  for `Uncertainty`);
- `updates(losses, gradient_norms, step)`: new values of the weighting's
  state after the step, from every head's global loss (and, for
  `needs_head_gradients`, each head's gradient norm on the last shared trunk
  layer). The engine applies them only if the step was applied.

`GradNorm` and `DWA` balance heads against each other: pass the same object
as the `weight` of every head it balances. `Uncertainty` is per head.
FAMO and RandomWeights (RLW) are weightings too, shared by the heads they
balance. Gradient aggregation (PCGrad, MGDA, UPGrad, ...) changes how gradients are
combined, not weights: it is `Config.aggregation` (`engine/aggregation.py`).

Every weighting is a float32 Keras layer, so its variables are tracked,
checkpointed and exported with the head that owns it.
"""

import keras
import tensorflow as tf


class Weighting(keras.layers.Layer):
  """The base class; subclasses implement `weight` and, if stateful, `updates`."""

  needs_head_gradients = False  # GradNorm: per-head gradient norms at every step.
  stateful = False  # Whether `updates` returns anything.

  def __init__(self, **kwargs):
    super().__init__(dtype="float32", **kwargs)
    self.head_names = []
    self.built = True  # Its variables are made in __init__ and bind, never from inputs.

  def bind(self, head):
    """Called once by each head that uses this weighting."""
    if head.name in self.head_names:
      raise ValueError(f"Head '{head.name}' is already bound to this {type(self).__name__}.")
    self.head_names.append(head.name)

  def weight(self, head_name, step):
    """The head's effective loss weight at `step` (a float32 scalar)."""
    raise NotImplementedError

  def regulariser(self, head_name):
    """A term added once to the total loss besides `weight * loss` (learned weightings)."""
    del head_name
    return tf.constant(0.0)

  def summaries(self, head_name) -> dict:
    """Extra values to show in TensorBoard as `<head>/<key>`."""
    del head_name
    return {}

  def updates(self, losses: dict, gradient_norms: dict, step) -> list:
    """[(variable, new value)] after a step; `losses` and `gradient_norms` by head."""
    del losses, gradient_norms, step
    return []

  def call(self, inputs):  # Never called: a Layer only to track variables.
    return inputs


class Static(Weighting):
  """A fixed weight >= 0."""

  def __init__(self, value: float = 1.0, **kwargs):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise ValueError(f"A static weight must be a number >= 0; received {value!r}.")
    super().__init__(**kwargs)
    self.value = float(value)

  def weight(self, head_name, step):
    del head_name, step
    return tf.constant(self.value, tf.float32)


class Schedule(Weighting):
  """A weight that is a function of the global step, evaluated in the compiled step.

  Args:
    schedule: a `keras.optimizers.schedules.LearningRateSchedule` (any of
      Keras's decays and piecewise schedules) or any callable of the step
      returning a scalar. `Schedule.linear` and `Schedule.piecewise` build
      the common ones.
  """

  def __init__(self, schedule, **kwargs):
    if not callable(schedule):
      raise ValueError(f"schedule must be callable with the step; received {schedule!r}.")
    super().__init__(**kwargs)
    self.schedule = schedule

  @classmethod
  def linear(cls, start: float, end: float, ramp_steps: int, warmup_steps: int = 0):
    """`start` for `warmup_steps`, then linearly to `end` over `ramp_steps`, then `end`."""
    if ramp_steps < 1 or warmup_steps < 0 or min(start, end) < 0:
      raise ValueError(f"linear schedule: need ramp_steps >= 1, warmup_steps >= 0 and "
                       f"weights >= 0; received start={start}, end={end}, "
                       f"ramp_steps={ramp_steps}, warmup_steps={warmup_steps}.")
    ramp = keras.optimizers.schedules.PolynomialDecay(float(start), ramp_steps, float(end),
                                                      power=1.0)
    return cls(lambda step: ramp(tf.maximum(tf.cast(step, tf.float32) - warmup_steps, 0.0)))

  @classmethod
  def piecewise(cls, boundaries, values):
    """`values[i]` for steps in (boundaries[i-1], boundaries[i]] (Keras's convention)."""
    if len(values) != len(boundaries) + 1 or min(values) < 0:
      raise ValueError(f"piecewise schedule: need one more value than boundaries, all >= 0; "
                       f"received boundaries={list(boundaries)}, values={list(values)}.")
    return cls(keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(b) for b in boundaries], [float(v) for v in values]))

  def weight(self, head_name, step):
    del head_name
    return tf.cast(self.schedule(step), tf.float32)


class Uncertainty(Weighting):
  """Learned homoscedastic uncertainty (Kendall, Gal & Cipolla, CVPR 2018).

  One learned log-variance s = log(sigma^2) for the head, trained with the
  model. The head's term is `0.5 * exp(-s) * loss + 0.5 * s` for a
  regression head (Gaussian likelihood with a squared-error loss) and
  `exp(-s) * loss + 0.5 * s` for classification (a softmax scaled by
  1/sigma^2). For a regression head the minimum over s is at s = log(mse):
  the learned variance is the head's noise variance.
  """

  def __init__(self, initial_log_variance: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.log_variance = self.add_weight(
        shape=(), initializer=keras.initializers.Constant(float(initial_log_variance)),
        trainable=True, name="log_variance", dtype="float32")
    self.scale = None

  def bind(self, head):
    if self.head_names:
      raise ValueError(f"Head '{head.name}': an Uncertainty weighting belongs to one head; "
                       f"this one is already used by '{self.head_names[0]}'.")
    super().bind(head)
    self.scale = 0.5 if head.task == "regression" else 1.0

  def weight(self, head_name, step):
    del head_name, step
    return self.scale * tf.exp(-tf.convert_to_tensor(self.log_variance))

  def regulariser(self, head_name):
    del head_name
    return 0.5 * tf.convert_to_tensor(self.log_variance)

  def summaries(self, head_name) -> dict:
    del head_name
    return {"log_variance": tf.convert_to_tensor(self.log_variance)}


def _add_head_state(weighting, state, head_name, initializer="zeros"):
  """A float32 scalar `<state>_<head>`, the same on every replica (set from reduced values)."""
  setattr(weighting, f"{state}_{head_name}", weighting.add_weight(
      shape=(), initializer=initializer, trainable=False, name=f"{state}_{head_name}",
      dtype="float32", aggregation="only_first_replica"))


class _SharedWeights(Weighting):
  """A weight variable per bound head, renormalised to sum to the number of heads."""

  stateful = True

  def bind(self, head):
    super().bind(head)
    self._add_state("weight", head.name, "ones")

  def _add_state(self, state, head_name, initializer="zeros"):
    _add_head_state(self, state, head_name, initializer)

  def weight_variable(self, head_name):
    return getattr(self, f"weight_{head_name}")

  def weight(self, head_name, step):
    del step
    return tf.convert_to_tensor(self.weight_variable(head_name))

  def weights(self):
    return tf.stack([self.weight(name, None) for name in self.head_names])


class GradNorm(_SharedWeights):
  """GradNorm (Chen et al., ICML 2018): weights that balance gradient norms.

  With G_i = |grad_W (w_i L_i)| on the last shared trunk layer W, the
  relative inverse training rate r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0))
  and target T_i = mean_j(G_j) * r_i^alpha (held constant), each step takes
  a gradient step on sum_i |G_i - T_i| / mean_j(G_j) with respect to the
  log-weights, then renormalises the weights to sum to the number of heads.
  Dividing by mean(G) makes `learning_rate` independent of the gradients'
  scale, and stepping in log space keeps the weights positive with steps
  relative to their size (a plain step on w_i is n_i-sized, which makes a
  small weight overshoot). A larger `alpha` pulls harder towards equal
  training rates.
  """

  needs_head_gradients = True

  def __init__(self, alpha: float = 1.5, learning_rate: float = 0.025, **kwargs):
    if alpha < 0 or learning_rate <= 0:
      raise ValueError(f"GradNorm needs alpha >= 0 and learning_rate > 0; received "
                       f"alpha={alpha!r}, learning_rate={learning_rate!r}.")
    super().__init__(**kwargs)
    self.alpha, self.learning_rate = float(alpha), float(learning_rate)

  def bind(self, head):
    super().bind(head)
    self._add_state("initial_loss", head.name)

  def updates(self, losses, gradient_norms, step):
    del step
    names = self.head_names
    weights = self.weights()
    loss = tf.stack([tf.cast(losses[name], tf.float32) for name in names])
    initial = tf.stack([tf.convert_to_tensor(getattr(self, f"initial_loss_{n}")) for n in names])
    initial = tf.where(initial > 0, initial, loss)  # The first step records L(0).
    norms = tf.stack([tf.cast(gradient_norms[name], tf.float32) for name in names])  # G_i
    new_weights = gradnorm_weights(weights, norms, loss / initial, self.alpha,
                                   self.learning_rate)
    return ([(self.weight_variable(n), new_weights[i]) for i, n in enumerate(names)]
            + [(getattr(self, f"initial_loss_{n}"), initial[i]) for i, n in enumerate(names)])


def gradnorm_weights(weights, weighted_norms, loss_ratios, alpha, learning_rate):
  """One GradNorm step on the weights; see `GradNorm`. All arguments are [heads]."""
  count = tf.cast(tf.size(weights), tf.float32)
  mean_norm = tf.maximum(tf.reduce_mean(weighted_norms), 1e-12)
  rates = loss_ratios / tf.reduce_mean(loss_ratios)
  targets = mean_norm * rates ** alpha
  # d/d(log w_i) |w_i n_i - T_i| / mean(G) = sign(G_i - T_i) * G_i / mean(G).
  gradient = tf.sign(weighted_norms - targets) * weighted_norms / mean_norm
  stepped = weights * tf.exp(-learning_rate * gradient)
  return stepped * count / tf.reduce_sum(stepped)


class DWA(_SharedWeights):
  """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

  The losses are averaged over periods of `period` steps (the paper's
  epochs). In period n >= 2, w_i = K * softmax_i(r_i / temperature) with
  r_i = mean loss of head i in period n-1 / in period n-2; before, w_i = 1.
  """

  def __init__(self, temperature: float = 2.0, period: int = 100, **kwargs):
    if temperature <= 0 or period < 1:
      raise ValueError(f"DWA needs temperature > 0 and period >= 1; received "
                       f"temperature={temperature!r}, period={period!r}.")
    super().__init__(**kwargs)
    self.temperature, self.period = float(temperature), int(period)

  def bind(self, head):
    super().bind(head)
    for state in ("running_sum", "last_mean", "previous_mean"):
      self._add_state(state, head.name)

  def _state(self, state):
    return tf.stack([tf.convert_to_tensor(getattr(self, f"{state}_{n}"))
                     for n in self.head_names])

  def updates(self, losses, gradient_norms, step):
    """`step` is the global step of the loss, counted from 0."""
    del gradient_norms
    names = self.head_names
    loss = tf.stack([tf.cast(losses[name], tf.float32) for name in names])
    running = self._state("running_sum") + loss
    last, previous = self._state("last_mean"), self._state("previous_mean")
    period_ends = tf.equal((tf.cast(step, tf.int64) + 1) % self.period, 0)
    new_previous = tf.where(period_ends, last, previous)
    new_last = tf.where(period_ends, running / self.period, last)
    new_running = tf.where(period_ends, tf.zeros_like(running), running)
    ready = tf.reduce_all(new_previous > 0)
    ratios = tf.math.divide_no_nan(new_last, new_previous)
    count = float(len(names))
    new_weights = tf.where(ready, count * tf.nn.softmax(ratios / self.temperature),
                           tf.ones_like(loss))
    pairs = []
    for i, name in enumerate(names):
      pairs += [(self.weight_variable(name), new_weights[i]),
                (getattr(self, f"running_sum_{name}"), new_running[i]),
                (getattr(self, f"last_mean_{name}"), new_last[i]),
                (getattr(self, f"previous_mean_{name}"), new_previous[i])]
    return pairs


class RandomWeights(Weighting):
  """Random loss weighting, RLW (Lin et al., TMLR 2022): fresh weights every step.

  w = softmax(e), e ~ N(0, I) over the heads it is shared by, drawn from
  (seed, step) with TensorFlow's stateless normal, so every replica and a
  resumed run draw the same. The weights sum to 1, as in the paper and
  LibMTL (equal static weights of 1 sum to the number of heads).
  """

  def __init__(self, seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.seed = int(seed)

  def weights(self, step):
    noise = tf.random.stateless_normal(
        [len(self.head_names)], seed=tf.stack([tf.constant(self.seed, tf.int64),
                                               tf.cast(step, tf.int64)]))
    return tf.nn.softmax(noise)

  def weight(self, head_name, step):
    return self.weights(step)[self.head_names.index(head_name)]


class FAMO(Weighting):
  """Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023), O(1) per step.

  Logits xi give z = softmax(xi); the model follows the gradient of
  sum_i z_i log(L_i) / c, c = sum_j z_j / L_j, i.e. loss weights
  w_i = z_i / (c L_i), which make every head's loss fall at the rate z asks
  for. After each step, xi takes an Adam step (learning rate
  `learning_rate`, decoupled decay `decay`, the paper's 0.025 and 0.001) on
  J_z^T delta, delta_i = log L_i(before) - log L_i(after). O(1): the losses
  are those the steps compute anyway, so "before" and "after" are two
  consecutive batches (the authors' code measures both on one batch, with a
  second forward pass), and the weights of a step use the previous step's
  losses (1 at the first step).
  """

  def __init__(self, learning_rate: float = 0.025, decay: float = 0.001, **kwargs):
    if not learning_rate > 0 or decay < 0:
      raise ValueError(f"FAMO needs learning_rate > 0 and decay >= 0; received "
                       f"learning_rate={learning_rate!r}, decay={decay!r}.")
    super().__init__(**kwargs)
    self.learning_rate, self.decay = float(learning_rate), float(decay)

  stateful = True

  def bind(self, head):
    super().bind(head)
    for state, initializer in (("logit", "zeros"), ("previous_loss", "ones"),
                               ("first_moment", "zeros"), ("second_moment", "zeros")):
      _add_head_state(self, state, head.name, initializer)
    if len(self.head_names) == 1:
      self._steps = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                    name="updates", dtype="float32",
                                    aggregation="only_first_replica")

  def _state(self, state):
    return tf.stack([tf.convert_to_tensor(getattr(self, f"{state}_{n}"))
                     for n in self.head_names])

  def weights(self):
    """w_i = z_i / (c L_i), c = sum_j z_j / L_j, with the previous step's losses: 1/K
    each at the first step."""
    z = tf.nn.softmax(self._state("logit"))
    loss = self._state("previous_loss")
    return z / (tf.reduce_sum(z / loss) * loss)

  def weight(self, head_name, step):
    del step
    return self.weights()[self.head_names.index(head_name)]

  def updates(self, losses, gradient_norms, step):
    del gradient_norms, step
    names = self.head_names
    loss = tf.maximum(tf.stack([tf.cast(losses[n], tf.float32) for n in names]), 1e-8)
    previous, logits = self._state("previous_loss"), self._state("logit")
    z = tf.nn.softmax(logits)
    delta = tf.math.log(previous) - tf.math.log(loss)
    gradient = z * delta - z * tf.reduce_sum(z * delta)  # J_softmax^T delta.
    count = tf.convert_to_tensor(self._steps) + 1.0
    first = 0.9 * self._state("first_moment") + 0.1 * gradient
    second = 0.999 * self._state("second_moment") + 0.001 * gradient * gradient
    adam = (first / (1 - 0.9 ** count)) / (tf.sqrt(second / (1 - 0.999 ** count)) + 1e-8)
    new_logits = logits - self.learning_rate * (adam + self.decay * logits)
    pairs = [(self._steps, count)]
    for i, name in enumerate(names):
      pairs += [(getattr(self, f"logit_{name}"), new_logits[i]),
                (getattr(self, f"previous_loss_{name}"), loss[i]),
                (getattr(self, f"first_moment_{name}"), first[i]),
                (getattr(self, f"second_moment_{name}"), second[i])]
    return pairs

  def summaries(self, head_name) -> dict:
    z = tf.nn.softmax(self._state("logit"))
    return {"famo_z": z[self.head_names.index(head_name)]}
