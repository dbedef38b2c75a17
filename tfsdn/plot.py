"""`plot_connectivity`: each dense block's connectivity as a heatmap."""

import math

import numpy as np

from tfsdn.files import atomic_path
from tfsdn.report import ModelReport
from tfsdn.report import model_report


def plot_connectivity(report, path):
  """Writes each dense block's connectivity matrix as a PNG heatmap.

  One panel per block: rows are the consuming layers, columns the layers
  whose feature maps they are offered; colour is the fraction still read.
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
    report = model_report(report)
  if not report.blocks:
    raise ValueError(
        f"Model {report.model_name!r} has no dense block to plot (form "
        f"{report.form!r}); plot the pruned model or its tfsdn.strip record.")
  count = len(report.blocks)
  fig, axes = plt.subplots(1, count, figsize=(4.5 * count, 4.2), squeeze=False)
  for b, (block, ax) in enumerate(zip(report.blocks, axes[0]), start=1):
    image = ax.imshow(np.ma.masked_invalid(block.matrix), vmin=0, vmax=1,
                      cmap="viridis", aspect="auto")
    ax.set_title(f"block {b}")
    ax.set_xlabel("source layer (feature maps)")
    ax.set_ylabel("consuming layer")
    step = max(1, math.ceil(len(block.sources) / 12))
    ax.set_xticks(range(0, len(block.sources), step))
    step = max(1, math.ceil(len(block.consumers) / 12))
    ax.set_yticks(range(0, len(block.consumers), step))
  fig.colorbar(image, ax=axes[0].tolist(), label="fraction of feature maps read")
  fig.suptitle(f"{report.model_name} ({report.form})")
  try:
    with atomic_path(path, suffix=".png") as tmp:
      fig.savefig(tmp, dpi=100)
  finally:
    plt.close(fig)
  return report
