"""`model_report` for Keras 3: parameters, MACs and connectivity.

The same report as the tfmot path's `tfsdn.model_report` (the data types
and the connectivity come from `tfsdn.common.report`), so
`tfsdn.plot_connectivity` draws the Keras 3 path's heatmap too.
"""

import keras

from tfsdn.keras3 import graph
from tfsdn.keras3.pruning import prunable_layers
from tfsdn.keras3.strip import Stripped
from tfsdn.keras3.strip import strip
from tfsdn.common.report import ModelReport
from tfsdn.common.report import connectivity
from tfsdn.common.report import weight_rows


def _weight_rows(compact, stripped_layers, input_size):
  return weight_rows(compact, stripped_layers, keras,
                     lambda layer: (layer.input.shape, layer.output.shape),
                     input_size)


def model_report(model, input_size=None):
  """Per-layer live inputs, parameters and MACs, totals, and connectivity.

  Nested models (a backbone under a head) are inlined, as `strip` and the
  tfmot path's `tfsdn.model_report` do: the report counts every layer.

  Args:
    model: A `tfsdn.keras3.Stripped` record, or a functional or Sequential
      Keras 3 model (with `PrunableConcatConv`s: reported through one
      `strip`; without: counted layer by layer, form `"compact"`).
    input_size: `(height, width)` of the images to count MACs for, as in
      `tfsdn.model_report`; needed for a model of unknown image size.

  Returns:
    A `tfsdn.common.report.ModelReport`, the tfmot path's report type.

  Raises:
    TypeError: for a tf_keras or subclassed model, or a Sequential model
      without an input shape.
    ValueError: for a bad `input_size`, or none for a model whose image
      size is unknown (`tfsdn.common.report.image_size`).
  """
  if not isinstance(model, Stripped):
    graph.functional(model)  # Checks the model's type.
    if not prunable_layers(model):
      flat = graph.flatten(model)
      rows = _weight_rows(flat, {}, input_size)
      return ModelReport(model.name, "compact", list(rows.values()),
                         int(flat.count_params()),
                         int(sum(r.macs for r in rows.values())), [])
    # Counted as pruned: the exact reads (a `Stripped` record is counted
    # as it was built).
    model = strip(model, slice_cost_macs=0)
  rows = _weight_rows(model.model, model.layers, input_size)
  return ModelReport(model.source_name, "pruned" if model.pruned else "dense",
                     list(rows.values()), int(model.model.count_params()),
                     int(sum(r.macs for r in rows.values())),
                     connectivity(model.layers, model.source_channels))
