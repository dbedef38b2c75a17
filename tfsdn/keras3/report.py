"""`model_report` for Keras 3: parameters, MACs and connectivity.

The same report as the tfmot path's `tfsdn.model_report` (the data types
and the connectivity come from `tfsdn.reporting`), so
`tfsdn.plot_connectivity` draws the Keras 3 path's heatmap too.
"""

import keras
import numpy as np

from tfsdn.keras3.checks import require_keras3_model
from tfsdn.keras3.pruning import prunable_layers
from tfsdn.keras3.strip import Stripped
from tfsdn.keras3.strip import strip
from tfsdn.reporting import LayerRow
from tfsdn.reporting import ModelReport
from tfsdn.reporting import connectivity


def _weight_rows(compact, stripped_layers):
  rows = {}
  for layer in compact.layers:
    if isinstance(layer, keras.layers.Conv2D):
      kh, kw = layer.kernel_size
      cin = int(layer.input.shape[-1])
      out_h, out_w = layer.output.shape[1:3]
      params = layer.count_params()
      kind = "conv"
      record = stripped_layers.get(layer.name)
      if record is not None:
        kind = "prunable"
        params += sum(compact.get_layer(name).count_params()
                      for name in record.compact_layers if name != layer.name)
      macs = kh * kw * (cin // layer.groups) * layer.filters * out_h * out_w
      rows[layer.name] = LayerRow(layer.name, kind, cin, cin, layer.filters,
                                  params, int(macs))
    elif isinstance(layer, keras.layers.Dense):
      cin = int(layer.input.shape[-1])
      rows[layer.name] = LayerRow(layer.name, "dense", cin, cin, layer.units,
                                  layer.count_params(), cin * layer.units)
  for name, record in stripped_layers.items():
    if name in rows:
      rows[name].input_live = int(np.sum(record.live))
      rows[name].input_offered = len(record.offered)
      rows[name].prunes = record.prunes
  return rows


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
