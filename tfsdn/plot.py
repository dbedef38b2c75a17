"""`plot_connectivity`: each dense block's connectivity as a heatmap."""

import math
import textwrap

import numpy as np

from tfsdn.files import atomic_path
from tfsdn.common.report import ModelReport


def plot_connectivity(report, path):
  """Writes each dense block's connectivity matrix as a PNG heatmap.

  One panel per block (dense connections), and for DenseNet-B models a last
  panel with the bottleneck widths. In a block panel rows are the layers
  that read the block (`T`, the
  last row of every block but the last, is the transition layer), columns
  the layers whose feature maps they are offered (`in`, column 0, is the
  block's input: the stem's or the previous transition's output); colour is
  the fraction still read. A caption under the panels says so too.
  Needs matplotlib (`pip install tfsdn[plot]`).

  Example:

  ```python
  tfsdn.plot_connectivity(tfsdn.model_report(tfsdn.strip(pruned)), "c.png")
  ```

  Args:
    report: A `ModelReport`, or anything `model_report` accepts (a model or
      a `Stripped` record), which is reported first.
    path: Where to write the PNG; written to a temporary file, then renamed.

  Returns:
    The `ModelReport` that was plotted.

  Raises:
    ImportError: without matplotlib.
    ValueError: if the report has no dense block (a model without
      `PrunableConcatConv`, such as a compact model loaded from disk).
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "plot_connectivity needs matplotlib: pip install 'tfsdn[plot]'") from e
  if not isinstance(report, ModelReport):
    from tfsdn.report import model_report  # pylint: disable=g-import-not-at-top
    report = model_report(report)
  if not report.blocks:
    raise ValueError(
        f"Model {report.model_name!r} has no dense block to plot (form "
        f"{report.form!r}); plot the pruned model or its tfsdn.strip record.")
  count = len(report.blocks)
  widths = report.widths
  panels = count + bool(widths)
  fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2),
                           squeeze=False)
  if widths:
    _plot_widths(axes[0][-1], widths)
  for b, (block, ax) in enumerate(zip(report.blocks, axes[0]), start=1):
    image = ax.imshow(np.ma.masked_invalid(block.matrix), vmin=0, vmax=1,
                      cmap="viridis", aspect="auto")
    ax.set_title(f"block {b}")
    ax.set_xlabel("source: in = block input, i = layer i")
    ax.set_ylabel("reading layer (T = transition)")
    rows, columns = tick_labels(report, b - 1)
    ax.set_xticks(list(columns), list(columns.values()))
    ax.set_yticks(list(rows), list(rows.values()))
  fig.colorbar(image, ax=axes[0][:count].tolist(),
               label="fraction of feature maps read")
  fig.suptitle(f"{report.model_name} ({report.form})")
  caption = ("Each row is a layer of the block and each column a layer whose "
             "feature maps it is offered. Source 'in' is the block's input "
             "(the stem's or the previous transition's output), source i the "
             "output of the block's layer i; row T, the last of every block "
             "but the last, is the transition layer that reads the whole "
             "block. Blank: not offered." + (
                 " Last panel: bottleneck widths, the fraction of each "
                 "bottleneck's filters the 3x3 conv after it still reads "
                 "(strip removes the others)." if widths else ""))
  fig.text(0.01, -0.04, textwrap.fill(caption, 75 * count), fontsize=8,
           va="top")
  try:
    with atomic_path(path, suffix=".png") as tmp:
      fig.savefig(tmp, dpi=100, bbox_inches="tight")  # no empty margins
  finally:
    plt.close(fig)
  return report


def _plot_widths(ax, widths):
  """A bar per width-pruning layer: the fraction of its inputs still read."""
  names = [name for name, _, _ in widths]
  fractions = [live / offered if offered else 0.0
               for _, live, offered in widths]
  ax.barh(range(len(names)), fractions, color="C2")
  step = max(1, math.ceil(len(names) / 16))
  ax.set_yticks(list(range(0, len(names), step)), names[::step], fontsize=6)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel("fraction of the bottleneck's filters read")
  ax.set_title("bottleneck widths")


def tick_labels(report, index):
  """`(rows, columns)` tick labels of block `index`: {position: label}.

  Columns: `in` for the block's input, then the block's layers 1, 2, ...
  Rows: the reading layers 1, 2, ..., and `T` for the last row when it is
  the transition layer (its output is the next block's input). At most
  about 12 labels per axis; the last row is always labelled.
  """
  block = report.blocks[index]
  later_inputs = {b.sources[0] for b in report.blocks[index + 1:]}
  transition = block.consumers[-1] in later_inputs
  step = max(1, math.ceil(len(block.sources) / 12))
  columns = {j: "in" if j == 0 else str(j)
             for j in range(0, len(block.sources), step)}
  last = len(block.consumers) - 1
  step = max(1, math.ceil(len(block.consumers) / 12))
  positions = sorted(set(range(0, last + 1, step)) | {last})
  rows = {i: "T" if transition and i == last else str(i + 1)
          for i in positions}
  return rows, columns
