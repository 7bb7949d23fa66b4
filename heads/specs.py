"""Heads from a short text, for command lines: "name:kind:size[:weight]".

`digit:softmax:10,parity:softmax:2:0.5,box:regression:4:0.25` builds three
heads. Kinds: softmax, sigmoid, sparsemax, entmax (size = number of
classes) and regression (size = units). Heads with more options are built
in Python.
"""

from heads import regression
from heads import sigmoid
from heads import softmax
from heads import sparse

_KINDS = {
    "softmax": softmax.SoftmaxHead,
    "sigmoid": sigmoid.SigmoidHead,
    "sparsemax": sparse.SparsemaxHead,
    "entmax": sparse.EntmaxHead,
    "regression": regression.RegressionHead,
}


def parse_heads(text: str, flag: str = "--heads"):
  """Returns the list of heads `text` describes; errors name `flag`."""
  result = []
  for item in [part.strip() for part in text.split(",") if part.strip()]:
    fields = item.split(":")
    if len(fields) not in (3, 4):
      raise ValueError(
          f"{flag}: each head is 'name:kind:size[:weight]'; received {item!r}.")
    name, kind, size = fields[:3]
    if kind not in _KINDS:
      raise ValueError(
          f"{flag}: head '{name}' has kind {kind!r}; expected one of {sorted(_KINDS)}.")
    try:
      size_value = int(size)
      weight = float(fields[3]) if len(fields) == 4 else 1.0
    except ValueError:
      raise ValueError(
          f"{flag}: head '{name}' needs an integer size and a float weight; "
          f"received {item!r}.") from None
    result.append(_KINDS[kind](name, size_value, weight=weight))
  if not result:
    raise ValueError(f"{flag}: at least one head is needed; received {text!r}.")
  return result
