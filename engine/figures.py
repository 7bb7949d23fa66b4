"""The evaluation's figures, drawn with matplotlib on the host, as images for TensorBoard.

Drawn at each evaluation from the sums the compiled eval step keeps (see
`engine.pictures`), with matplotlib's Agg canvas directly (no pyplot: no
global figure state, safe beside a training thread). 640 x 640 pixels, at
sizes that stay legible in TensorBoard's Images tab. Margins are set by
hand: matplotlib's constrained layout took 40% of the drawing time, and a
figure is drawn per head at every evaluation.
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SIZE_INCHES, DPI = 6.4, 100  # 640 px square.
MAX_MATRIX_CLASSES = 30  # Beyond, a matrix's cells are too small: the most confused pairs.
MAX_CELL_TEXT_CLASSES = 15  # Counts are written in the cells up to this many classes.
MOST_CONFUSED_PAIRS = 20


def to_image(figure) -> np.ndarray:
  """[1, H, W, 3] uint8 pixels of a matplotlib figure."""
  canvas = FigureCanvasAgg(figure)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[np.newaxis, ..., :3].copy()


def _count(value) -> str:
  return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def confusion_figure(counts, class_names, head_name: str):
  """Rows: true class, normalised to fractions (the colour); the counts in the cells.

  With more than MAX_MATRIX_CLASSES classes, the most confused pairs instead.
  """
  counts = np.asarray(counts, np.float64)
  if len(counts) > MAX_MATRIX_CLASSES:
    return _most_confused_figure(counts, class_names, head_name)
  figure = Figure(figsize=(SIZE_INCHES, SIZE_INCHES), dpi=DPI)
  left = 0.1 + 0.012 * min(max(map(len, class_names)), 20)
  figure.subplots_adjust(left=left, right=0.86, bottom=left, top=0.93)  # Room: colour bar.
  axes = figure.add_subplot()
  totals = counts.sum(axis=1, keepdims=True)
  fractions = counts / np.maximum(totals, 1e-12)
  image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
  figure.colorbar(image, ax=axes, fraction=0.046, pad=0.03, label="fraction of the true class")
  ticks = np.arange(len(counts))
  axes.set_xticks(ticks, class_names, rotation=45 if max(map(len, class_names)) > 2 else 0,
                  ha="right" if max(map(len, class_names)) > 2 else "center")
  axes.set_yticks(ticks, class_names)
  axes.set_xlabel("predicted class")
  axes.set_ylabel("true class")
  axes.set_title(f"{head_name}: confusion matrix ({_count(counts.sum())} examples)")
  if len(counts) <= MAX_CELL_TEXT_CLASSES:
    size = 9 if len(counts) <= 10 else 7
    for (row, column), value in np.ndenumerate(counts):
      axes.text(column, row, _count(value), ha="center", va="center", fontsize=size,
                color="white" if fractions[row, column] > 0.5 else "black")
  return figure


def _most_confused_figure(counts, class_names, head_name):
  off_diagonal = counts * (1 - np.eye(len(counts)))
  order = np.argsort(-off_diagonal, axis=None, kind="stable")[:MOST_CONFUSED_PAIRS]
  pairs = [np.unravel_index(index, counts.shape) for index in order]
  pairs = [(t, p) for t, p in pairs if off_diagonal[t, p] > 0]
  figure = Figure(figsize=(SIZE_INCHES, SIZE_INCHES), dpi=DPI)
  longest = max((len(class_names[t]) + len(class_names[p]) for t, p in pairs), default=4)
  figure.subplots_adjust(left=min(0.12 + 0.012 * longest, 0.5), right=0.97, bottom=0.09,
                         top=0.93)
  axes = figure.add_subplot()
  values = [off_diagonal[t, p] for t, p in pairs]
  rows = np.arange(len(pairs))
  axes.barh(rows, values, color="#2166ac")
  axes.set_yticks(rows, [f"{class_names[t]} \u2192 {class_names[p]}" for t, p in pairs])
  axes.invert_yaxis()
  totals = counts.sum(axis=1)
  for row, (t, p) in enumerate(pairs):
    axes.text(values[row], row, f" {_count(values[row])} ({values[row] / totals[t]:.0%})",
              va="center", fontsize=8)
  axes.set_xlim(0, max(values, default=1.0) * 1.25)  # Room for the labels.
  axes.set_xlabel("examples predicted as the other class (share of the true class)")
  axes.set_ylabel("true \u2192 predicted class")
  axes.set_title(f"{head_name}: the {len(pairs)} most confused pairs of {len(counts)} classes")
  return figure


def reliability_figure(counts, confidences, corrects, head_name: str, ece: float,
                       binary: bool = False):
  """Per equal-width bin: accuracy against mean confidence, the gap, and the bin's count.

  `binary`: the bins are of each label's probability (sigmoid heads), and a
  bin's "accuracy" is the frequency of positives in it.
  """
  counts, confidences, corrects = (np.asarray(v, np.float64)
                                   for v in (counts, confidences, corrects))
  bins = len(counts)
  edges = np.linspace(0.0, 1.0, bins + 1)
  centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / bins
  filled = counts > 0
  accuracy = np.where(filled, corrects / np.maximum(counts, 1e-12), 0.0)
  confidence = np.where(filled, confidences / np.maximum(counts, 1e-12), 0.0)
  figure = Figure(figsize=(SIZE_INCHES, SIZE_INCHES), dpi=DPI)
  figure.subplots_adjust(left=0.11, right=0.97, bottom=0.09, top=0.94, hspace=0.1)
  top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  observed = "frequency of positives" if binary else "accuracy"
  top.bar(centres[filled], accuracy[filled], width=width * 0.9, color="#2166ac",
          label=f"{observed} in the bin")
  gap_low = np.minimum(accuracy, confidence)
  top.bar(centres[filled], np.abs(confidence - accuracy)[filled], bottom=gap_low[filled],
          width=width * 0.9, color="#d6604d", alpha=0.7, hatch="//",
          label="gap to the bin's mean " + ("probability" if binary else "confidence"))
  top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
  top.set_xlim(0, 1)
  top.set_ylim(0, 1)
  top.set_ylabel(observed)
  top.legend(loc="upper left", fontsize=9)
  what = "all labels" if binary else "top-label confidence"
  top.set_title(f"{head_name}: reliability diagram ({what}), ECE {ece:.4f}")
  bottom.bar(centres, counts, width=width * 0.9, color="#878787")
  for centre, count in zip(centres[filled], counts[filled]):
    bottom.text(centre, count, _count(count), ha="center", va="bottom", fontsize=7)
  bottom.set_ylim(0, max(counts.max(), 1.0) * 1.25)
  bottom.set_ylabel("examples")
  bottom.set_xlabel("predicted probability" if binary else "confidence (top probability)")
  return figure
