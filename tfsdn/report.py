"""`model_report`: what a model computes, and what pruning saved.

Counting only: parameters and multiply-accumulates (MACs) per weight layer,
totals, and the connectivity of each dense block, read from the strip
step's record (`tfsdn.strip`). A dense or pruned model is reported as the
inference model `strip` makes of it, so a pruned model's report already
shows what stripping will save; pruning bookkeeping (scores, masks) is not
counted. A model without `PrunableConcatConv` (a compact model loaded from
disk, any stock model) is counted layer by layer, without connectivity:
report the `Stripped` record to see what its prunable layers read.
The plot is in `tfsdn.plot`.
"""

from tfsdn import graph
from tfsdn.compact import Stripped
from tfsdn.compact import strip
from tfsdn.compat import keras
from tfsdn.compat import require_functional
from tfsdn.prune import prunable_layers
from tfsdn.prune import strip_wrappers
from tfsdn.common.report import BlockConnectivity  # noqa: F401  pylint: disable=unused-import
from tfsdn.common.report import LayerRow  # noqa: F401  pylint: disable=unused-import
from tfsdn.common.report import ModelReport
from tfsdn.common.report import comparison_markdown  # noqa: F401  pylint: disable=unused-import
from tfsdn.common.report import connectivity
from tfsdn.common.report import image_size
from tfsdn.common.report import weight_rows


def _weight_rows(compact, stripped_layers, input_size):
  return weight_rows(compact, stripped_layers, keras,
                     lambda layer: (layer.input_shape, layer.output_shape),
                     input_size)


def model_report(model, input_size=None):
  """Per-layer live inputs, parameters and MACs, totals, and connectivity.

  Example:

  ```python
  before = tfsdn.model_report(dense_model)
  stripped = tfsdn.strip(pruned_model)
  after = tfsdn.model_report(stripped)        # no second strip
  print(before.to_markdown(), after.to_markdown())
  print(tfsdn.comparison_markdown(before, after))
  # A model built for any image size (input_shape=(None, None, 3)):
  report = tfsdn.model_report(model, input_size=(224, 224))
  ```

  Args:
    model: A `Stripped` record (`tfsdn.strip`), or a functional tf_keras
      model: dense or pruned (wrapped or stripped), reported through one
      `strip` with exact reads (`slice_cost_macs=0, pool_first=False`:
      the MACs the pruning planned), or without `PrunableConcatConv` (form `"compact"`: counted
      layer by layer, no prunable rows, no connectivity).
    input_size: `(height, width)` of the images to count MACs for (an int
      for a square); needed when the model takes images of any size
      (`input_shape=(None, None, 3)`). None counts at the model's own image
      size. Parameters and connectivity do not depend on it.

  Returns:
    A `ModelReport`.

  Raises:
    TypeError: for Keras 3 objects and subclassed models.
    ValueError: for a bad `input_size`, or none for a model whose image
      size is unknown.
  """
  if not isinstance(model, Stripped):
    require_functional(model)
    image_size(model, input_size)  # Checked before the strip.
    if not prunable_layers(model):
      model = graph.flatten(strip_wrappers(model))
      rows = _weight_rows(model, {}, input_size)
      return ModelReport(model.name, "compact", list(rows.values()),
                         int(model.count_params()),
                         int(sum(r.macs for r in rows.values())), [])
    # Counted as pruned: the exact reads, the MACs the pruning planned
    # (a `Stripped` record is counted as it was built).
    model = strip(model, slice_cost_macs=0, pool_first=False)
  rows = _weight_rows(model.model, model.layers, input_size)
  return ModelReport(model.source_name, "pruned" if model.pruned else "dense",
                     list(rows.values()), int(model.model.count_params()),
                     int(sum(r.macs for r in rows.values())),
                     connectivity(model.layers, model.source_channels))
