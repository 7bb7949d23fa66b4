"""The optimizer and learning-rate schedule a Config names (Keras 3's own classes).

The schedule is a function of the optimizer's `iterations`, which
checkpoints hold, so a resumed run continues it exactly. Every schedule may
start with a linear warmup from 0; the decay then runs over the steps after
it. Weight decay is decoupled and skips biases and normalisation scales.
"""

import keras
import tensorflow as tf

from engine.config import Config

# Variables (by their Keras name) that weight decay leaves alone.
NO_WEIGHT_DECAY = ("bias", "gamma", "beta", "scale", "log_variance")


@keras.saving.register_keras_serializable(package="engine")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
  """Linear from 0 to `peak` over `warmup_steps`, then `after(step - warmup_steps)`.

  `after` is a schedule or a constant learning rate.
  """

  def __init__(self, after, warmup_steps: int, peak: float):
    self.after = after
    self.warmup_steps = warmup_steps
    self.peak = peak

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warmup = tf.cast(self.warmup_steps, tf.float32)
    after = self.after
    decayed = after(tf.maximum(step - warmup, 0.0)) if callable(after) else tf.constant(
        after, tf.float32)
    rising = self.peak * step / tf.maximum(warmup, 1.0)
    return tf.where(step < warmup, rising, tf.cast(decayed, tf.float32))

  def get_config(self):
    after = self.after
    if isinstance(after, keras.optimizers.schedules.LearningRateSchedule):
      after = keras.optimizers.schedules.serialize(after)
    return {"after": after, "warmup_steps": self.warmup_steps, "peak": self.peak}

  @classmethod
  def from_config(cls, config):
    after = config["after"]
    if isinstance(after, dict):
      after = keras.optimizers.schedules.deserialize(after)
    return cls(after, config["warmup_steps"], config["peak"])


def learning_rate(config: Config):
  """The learning rate (a float or a Keras schedule) `config` describes."""
  peak = config.learning_rate
  decay_steps = config.lr_decay_steps or max(config.train_steps - config.warmup_steps, 1)
  schedules = keras.optimizers.schedules
  if config.lr_schedule == "constant":
    after = peak
  elif config.lr_schedule == "cosine":
    after = schedules.CosineDecay(peak, decay_steps, alpha=config.lr_end_fraction)
  elif config.lr_schedule == "linear":
    after = schedules.PolynomialDecay(peak, decay_steps, power=1.0,
                                      end_learning_rate=peak * config.lr_end_fraction)
  elif config.lr_schedule == "exponential":
    after = schedules.ExponentialDecay(peak, decay_steps, config.lr_decay_rate)
  else:  # piecewise
    after = schedules.PiecewiseConstantDecay(list(config.lr_boundaries), list(config.lr_values))
    peak = config.lr_values[0]
  if config.warmup_steps:
    return Warmup(after, config.warmup_steps, peak)
  return after


def create(config: Config) -> keras.optimizers.Optimizer:
  """The Keras optimizer `config.optimizer` names, with its schedule and weight decay."""
  rate = learning_rate(config)
  decay = config.weight_decay or None
  if config.optimizer == "adamw":
    # Keras's AdamW needs a rate; 0 is plain Adam.
    optimizer = keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
  elif config.optimizer == "adam":
    optimizer = keras.optimizers.Adam(rate, weight_decay=decay)
  elif config.optimizer == "sgd":
    optimizer = keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=config.nesterov,
                                     weight_decay=decay)
  elif config.optimizer == "rmsprop":
    optimizer = keras.optimizers.RMSprop(rate, momentum=config.momentum, weight_decay=decay)
  elif config.optimizer == "lion":
    optimizer = keras.optimizers.Lion(rate, weight_decay=decay)
  else:  # adafactor
    optimizer = keras.optimizers.Adafactor(rate, weight_decay=decay)
  # Under TensorFlow, Keras matches these against the tf.Variable's name
  # ("dense/bias:0"), not the Keras one ("bias"): match the last component.
  optimizer.exclude_from_weight_decay(
      var_names=[rf"(^|/){name}(:\d+)?$" for name in NO_WEIGHT_DECAY])
  return optimizer


def current_learning_rate(optimizer) -> tf.Tensor:
  """The rate the optimizer's next step uses (inside a LossScaleOptimizer too)."""
  inner = getattr(optimizer, "inner_optimizer", optimizer)
  return tf.cast(inner.learning_rate, tf.float32)
