"""Real-valued outputs of `units` dimensions."""

import keras
import tensorflow as tf

from heads import base
from heads import losses

_LOSSES = ("mse", "mae", "huber")


class RegressionHead(base.Head):
  """Regression with loss "mse", "mae" or "huber" (with `delta`).

  The per-example loss is the mean over the `units` outputs, as Keras's
  losses compute it. Metrics: MAE and RMSE.
  """

  task = "regression"
  main_metric = "mae"

  def __init__(self, name: str, units: int, loss: str = "mse",
               delta: float = 1.0, **kwargs):
    super().__init__(name, **kwargs)
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
      raise ValueError(f"Head '{name}': units must be an integer >= 1; received {units!r}.")
    if loss not in _LOSSES:
      raise ValueError(f"Head '{name}': loss must be one of {_LOSSES}; received {loss!r}.")
    if not delta > 0:
      raise ValueError(f"Head '{name}': delta must be > 0; received {delta!r}.")
    self.units = units
    self.loss_name = loss
    self.delta = float(delta)
    self.values_layer = keras.layers.Dense(units, name="values")
    self.mae = keras.metrics.MeanAbsoluteError(name="mae")
    self.rmse = keras.metrics.RootMeanSquaredError(name="rmse")

  @property
  def label_specs(self) -> tuple:
    return (base.LabelSpec(shape=(self.units,), dtype=tf.float32),)

  def call(self, features, training=False):
    del training
    return self.values_layer(features)  # (B, units)

  def per_example_loss(self, labels, logits):
    if self.loss_name == "mse":
      return losses.mean_squared_error(labels, logits)
    if self.loss_name == "mae":
      return losses.mean_absolute_error(labels, logits)
    return losses.huber(labels, logits, self.delta)

  def main_metric_values(self, labels, logits):
    return losses.mean_absolute_error(labels, logits)  # (B,)

  def predict(self, logits) -> dict:
    return {"values": tf.cast(logits, tf.float32)}

  def _update_metrics(self, labels, logits, sample_weight):
    values = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.float32)
    self.mae.update_state(labels, values, sample_weight)
    self.rmse.update_state(labels, values, sample_weight)
