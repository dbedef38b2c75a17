"""`model_report` for Keras 3: parameters, MACs and connectivity.

The same report as the tfmot path's `tfsdn.model_report` (the data types
and the connectivity come from `tfsdn.reporting`), so
`tfsdn.plot_connectivity` draws the Keras 3 path's heatmap too.
"""

import keras

from tfsdn.keras3.checks import require_keras3_model
from tfsdn.keras3.pruning import prunable_layers
from tfsdn.keras3.strip import Stripped
from tfsdn.keras3.strip import strip
from tfsdn.reporting import ModelReport
from tfsdn.reporting import connectivity
from tfsdn.reporting import weight_rows


def _weight_rows(compact, stripped_layers):
  return weight_rows(compact, stripped_layers, keras,
                     lambda layer: (layer.input.shape, layer.output.shape))


def model_report(model):
  """Per-layer live inputs, parameters and MACs, totals, and connectivity.

  Args:
    model: A `tfsdn.keras3.Stripped` record, or a functional Keras 3 model
      (with `PrunableConcatConv`s: reported through one `strip`; without:
      counted layer by layer, form `"compact"`).

  Returns:
    A `tfsdn.reporting.ModelReport`, the tfmot path's report type.
  """
  if not isinstance(model, Stripped):
    require_keras3_model(model)
    if not prunable_layers(model):
      rows = _weight_rows(model, {})
      return ModelReport(model.name, "compact", list(rows.values()),
                         int(model.count_params()),
                         int(sum(r.macs for r in rows.values())), [])
    model = strip(model)
  rows = _weight_rows(model.model, model.layers)
  return ModelReport(model.source_name, "pruned" if model.pruned else "dense",
                     list(rows.values()), int(model.model.count_params()),
                     int(sum(r.macs for r in rows.values())),
                     connectivity(model.layers, model.source_channels))
