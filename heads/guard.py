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


TOLERANCE = 1e-3  # How far from 1 a row's sums may be.


def looks_like_probabilities(tensor):
  """A bool scalar tensor: every row lies in [0, 1] and sums to 1 (graph- and XLA-safe)."""
  return probability_checks([tensor])[0]


def probability_checks(tensors):
  """[len(tensors)] bool: for each tensor, whether every row (its last axis) is a
  probability vector, up to `TOLERANCE`; False for integer tensors, rank < 2 or
  fewer than 2 columns.

  A row is a probability vector iff its sum and the sum of its absolute values
  are both 1: equal sums leave no negative value, and non-negative values that
  sum to 1 are at most 1. Zero columns change neither sum, so the rows of every
  tensor, padded to one width, take one reduction: the engine runs this in
  its compiled step, where each reduction is a kernel of its own to compile.
  """
  tensors = [tf.convert_to_tensor(t) for t in tensors]
  checked = [i for i, t in enumerate(tensors) if t.dtype.is_floating and t.shape.rank
             and t.shape.rank >= 2 and t.shape[-1] is not None and t.shape[-1] >= 2]
  if not checked:
    return tf.zeros([len(tensors)], tf.bool)
  width = max(tensors[i].shape[-1] for i in checked)
  rows = [tf.reshape(tf.cast(tensors[i], tf.float32), [-1, tensors[i].shape[-1]])
          for i in checked]
  values = tf.concat([tf.pad(r, [[0, 0], [0, width - r.shape[-1]]]) for r in rows], axis=0)
  # A product with ones: one kernel under XLA (`heads.sums`).
  sums = tf.einsum("rsw,w->rs", tf.stack([values, tf.abs(values)], axis=1),
                   tf.ones([width]))  # [rows, 2]
  worst = tf.split(tf.reduce_max(tf.abs(sums - 1.0), axis=-1),
                   [tf.shape(r)[0] for r in rows])  # Per tensor, its rows' worst.
  flags = dict(zip(checked, (tf.reduce_max(part) < TOLERANCE for part in worst)))
  return tf.stack([flags.get(i, tf.constant(False)) for i in range(len(tensors))])


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
