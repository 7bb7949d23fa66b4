"""The double-softmax guard: heads fed probabilities instead of logits.

A trunk that ends in a softmax, or logits that are already normalised, train
badly without any error. `DistributionHead`s carry a policy
(`double_softmax="warn" | "raise" | "ignore"`). The engine evaluates
`looks_like_probabilities` inside its compiled first step of each `train`
call (no program of its own) and reports through `report`; `loss_terms` run
eagerly checks too.
"""

import warnings

import tensorflow as tf

from heads import base

POLICIES = ("warn", "raise", "ignore")
# What the engine checks, in this order: the head's input, then its logits.
WHAT = ("its input features", "its logits")


def looks_like_probabilities(tensor):
  """A bool scalar tensor: every row lies in [0, 1] and sums to 1 (graph- and XLA-safe).

  Two reductions (the row sums, then one maximum), since the engine runs it
  inside its compiled step, where every reduction is compiled code.
  """
  tensor = tf.convert_to_tensor(tensor)
  if not tensor.dtype.is_floating or tensor.shape.rank < 2 or tensor.shape[-1] < 2:
    return tf.constant(False)
  values = tf.reshape(tf.cast(tensor, tf.float32), [-1, tensor.shape[-1]])
  outside_unit = tf.abs(values - 0.5) - 0.5  # <= 0 inside [0, 1].
  off_one = tf.abs(tf.reduce_sum(values, axis=-1, keepdims=True) - 1.0) - 1e-3  # < 0: sums to 1.
  worst = tf.reduce_max(tf.concat([outside_unit, off_one], axis=-1))
  return worst < 0.0


def message(head_name: str, what: str) -> str:
  return (f"Head '{head_name}': {what} look like probabilities (every row in [0, 1], "
          "summing to 1). Heads normalise logits themselves: remove the softmax "
          "from the trunk or head input, or pass double_softmax='ignore'.")


class DistributionHead(base.Head):
  """A head whose outputs are logits of a distribution over classes.

  `double_softmax` says what to do when the head is fed probabilities:
  "warn" (once per head), "raise" or "ignore".
  """

  def __init__(self, name: str, *, double_softmax: str = "warn", **kwargs):
    super().__init__(name, **kwargs)
    if double_softmax not in POLICIES:
      raise ValueError(f"Head '{name}': double_softmax must be one of {POLICIES}; "
                       f"received {double_softmax!r}.")
    self.double_softmax = double_softmax
    self._warned = False

  @property
  def guarded(self) -> bool:
    return self.double_softmax != "ignore"

  def report(self, what: str):
    """Warns (once) or raises, as the policy says, that `what` looks like probabilities."""
    text = message(self.name, what)
    if self.double_softmax == "raise":
      raise ValueError(text)
    if self.double_softmax == "warn" and not self._warned:
      self._warned = True
      warnings.warn(text, UserWarning, stacklevel=3)

  def loss_terms(self, labels, logits, sample_weight=None, training=False):
    if tf.executing_eagerly() and self.guarded and bool(looks_like_probabilities(logits)):
      self.report(WHAT[1])
    return super().loss_terms(labels, logits, sample_weight, training)


def check_num_classes(name: str, num_classes, what: str = "num_classes"):
  """A softmax over one class always predicts it, with probability 1: nothing to learn."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(
        f"Head '{name}': {what} must be an integer >= 2; received {num_classes!r}. A softmax "
        "over one class always predicts it; for one yes/no output use "
        f"SigmoidHead('{name}', 1).")


def check_class_names(name: str, class_names, num_classes: int) -> tuple:
  """One distinct string per class (what figures label them with); the ids by default."""
  if class_names is None:
    return tuple(str(i) for i in range(num_classes))
  names = tuple(class_names) if not isinstance(class_names, str) else (class_names,)
  if (len(names) != num_classes or not all(isinstance(n, str) and n for n in names)
      or len(set(names)) != num_classes):
    raise ValueError(f"Head '{name}': class_names must be {num_classes} distinct non-empty "
                     f"strings; received {class_names!r}.")
  return names
