"""Heads from a short text, for command lines: "name:kind:size[:weight]".

`digit:softmax:10,parity:softmax:2:0.5,box:regression:4:0.25` builds three
heads. Kinds: softmax, sigmoid, sparsemax, entmax (size = number of
classes), large_vocab (size = vocabulary; labels per token) and regression
(size = units). Heads with more options are built in Python.

The loss weighting is chosen for all heads at once (`weighting`): "static"
(the weights in the text, or a schedule per head), "uncertainty", "gradnorm",
"dwa", "famo" or "rlw" (random weights). Schedules are texts too: `linear:START:END:RAMP_STEPS[:WARMUP]` or
`piecewise:B1/B2/...:V0/V1/V2/...`.
"""

from heads import large_vocab
from heads import regression
from heads import sigmoid
from heads import softmax
from heads import sparse
from heads import weighting as weighting_lib

WEIGHTINGS = ("static", "uncertainty", "gradnorm", "dwa", "famo", "rlw")

_KINDS = {
    "softmax": softmax.SoftmaxHead,
    "sigmoid": sigmoid.SigmoidHead,
    "sparsemax": sparse.SparsemaxHead,
    "entmax": sparse.EntmaxHead,
    "regression": regression.RegressionHead,
    "large_vocab": large_vocab.LargeVocabSoftmaxHead,
}


def parse_heads(text: str, flag: str = "--heads", weighting: str = "static",
                schedules=None, gradnorm_alpha: float = 1.5, dwa_temperature: float = 2.0,
                dwa_period: int = 100):
  """Returns the list of heads `text` describes; errors name `flag`.

  `schedules` maps head names to schedule texts (static weighting only).
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"weighting: expected one of {WEIGHTINGS}; received {weighting!r}.")
  schedules = dict(schedules or {})
  shared = {"gradnorm": lambda: weighting_lib.GradNorm(alpha=gradnorm_alpha),
            "dwa": lambda: weighting_lib.DWA(temperature=dwa_temperature, period=dwa_period),
            "famo": weighting_lib.FAMO, "rlw": weighting_lib.RandomWeights}
  shared = shared[weighting]() if weighting in shared else None
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
    if weighting != "static" and (len(fields) == 4 or name in schedules):
      raise ValueError(
          f"{flag}: head '{name}' has a fixed weight or schedule, but weighting={weighting} "
          "learns the weights: drop the weight from the heads (and weight_schedules), or use "
          "weighting=static.")
    if name in schedules:
      if len(fields) == 4:
        raise ValueError(f"{flag}: head '{name}' has both the weight {fields[3]} and the "
                         f"schedule {schedules[name]!r}: give one.")
      weight = parse_schedule(schedules.pop(name), name)
    elif weighting == "uncertainty":
      weight = weighting_lib.Uncertainty()
    elif shared is not None:
      weight = shared
    result.append(_KINDS[kind](name, size_value, weight=weight))
  if not result:
    raise ValueError(f"{flag}: at least one head is needed; received {text!r}.")
  if schedules:
    raise ValueError(f"weight_schedules names no head of {flag}: {sorted(schedules)}; "
                     f"the heads are {[head.name for head in result]}.")
  return result


def parse_schedule(text: str, head_name: str) -> weighting_lib.Schedule:
  """`linear:START:END:RAMP_STEPS[:WARMUP]` or `piecewise:B1/B2/...:V0/V1/V2/...`."""
  fields = text.split(":")
  try:
    if fields[0] == "linear" and len(fields) in (4, 5):
      start, end = float(fields[1]), float(fields[2])
      warmup = int(fields[4]) if len(fields) == 5 else 0
      return weighting_lib.Schedule.linear(start, end, int(fields[3]), warmup)
    if fields[0] == "piecewise" and len(fields) == 3:
      return weighting_lib.Schedule.piecewise([int(b) for b in fields[1].split("/")],
                                              [float(v) for v in fields[2].split("/")])
  except ValueError as error:
    raise ValueError(f"weight_schedules: head '{head_name}': {error}") from None
  raise ValueError(
      f"weight_schedules: head '{head_name}' has the schedule {text!r}; expected "
      "linear:START:END:RAMP_STEPS[:WARMUP] or piecewise:B1/B2/...:V0/V1/V2/...")
