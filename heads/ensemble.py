"""An ensemble of classification heads of one task, combined in log space."""

import keras
import tensorflow as tf

from heads import base
from heads import calibration_metrics
from heads import guard
from heads import losses
from heads import softmax


class EnsembleHead(guard.DistributionHead):
  """K `SoftmaxHead` members on the same input, predicting one distribution.

  Each member is trained on its own loss, as in deep ensembles: the
  ensemble's loss is the mean of the members' losses. The prediction
  averages the members' log-probabilities and applies one softmax:
  `softmax(mean_k log_softmax(z_k))`, the normalised geometric mean of the
  members' probabilities. Unlike the arithmetic mean of probabilities, a
  class that any member rules out confidently stays unlikely.

  Labels are those of the members (same `num_classes`). Members may differ
  in label smoothing and temperature, not in class weights (their loss
  normalisers must agree).

  Metrics: the ensemble's accuracy, nll and calibration metrics (ece, mce,
  adaptive_ece, classwise_ece, brier), plus every member's metrics
  as `<member>/<metric>`.
  """

  def __init__(self, name: str, members, **kwargs):
    super().__init__(name, **kwargs)
    members = list(members)
    if len(members) < 2 or not all(isinstance(m, softmax.SoftmaxHead) for m in members):
      raise ValueError(f"Head '{name}': members must be two or more SoftmaxHeads; "
                       f"received {[type(m).__name__ for m in members]}.")
    names = [member.name for member in members]
    classes = {member.num_classes for member in members}
    if len(set(names)) != len(names) or len(classes) != 1:
      raise ValueError(f"Head '{name}': members need unique names and one num_classes; "
                       f"received names {names} with num_classes {sorted(classes)}.")
    weights = [None if m.class_weights is None else m.class_weights.numpy().tolist()
               for m in members]
    if any(w != weights[0] for w in weights):
      raise ValueError(f"Head '{name}': members must share class_weights; received {weights}.")
    self.num_classes = classes.pop()
    self.member_names = names
    for member in members:
      # Plain attributes, so tf.train.Checkpoint sees each member by name.
      setattr(self, f"member_{member.name}", member)
    self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    self.nll = keras.metrics.Mean(name="nll")
    self.class_names = members[0].class_names
    self.calibration = calibration_metrics.CalibrationErrors(self.num_classes)

  @property
  def members(self):
    return [getattr(self, f"member_{name}") for name in self.member_names]

  @property
  def label_specs(self) -> tuple:
    return self.members[0].label_specs

  def call(self, features, training=False):
    return tf.stack([member(features, training=training) for member in self.members],
                    axis=1)  # (B, K, C)

  def combined_logits(self, logits):
    """mean_k log_softmax(z_k): logits of the ensemble's distribution, (B, C)."""
    return tf.reduce_mean(tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1), axis=1)

  def loss_weights(self, labels, sample_weight=None):
    return self.members[0].loss_weights(labels, sample_weight)

  def per_example_loss(self, labels, logits):
    return tf.add_n([member.per_example_loss(labels, logits[:, k])
                     for k, member in enumerate(self.members)]) / len(self.members)  # (B,)

  def main_metric_values(self, labels, logits):
    return softmax.correct(labels, self.combined_logits(logits))  # (B,)

  def predict(self, logits) -> dict:
    combined = self.combined_logits(logits)
    return {"probabilities": tf.nn.softmax(combined, axis=-1),
            "classes": tf.argmax(combined, axis=-1)}

  def metric_results(self) -> dict:
    results = base.metric_results([self.accuracy, self.nll, self.calibration])
    for member in self.members:
      results.update({f"{member.name}/{key}": value
                      for key, value in member.metric_results().items()})
    return results

  def _update_metrics(self, labels, logits, sample_weight):
    combined = self.combined_logits(logits)
    ids = tf.argmax(labels, axis=-1) if labels.dtype.is_floating else labels
    self.accuracy.update_state(ids, combined, sample_weight)
    self.nll.update_state(losses.softmax_cross_entropy(labels, combined), sample_weight)
    self.calibration.update_state(ids, tf.nn.softmax(combined, axis=-1), sample_weight)
    for k, member in enumerate(self.members):
      member.update_metrics(labels, logits[:, k], sample_weight)
