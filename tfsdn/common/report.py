"""The report's data (no TensorFlow): rows, totals, block connectivity.

Shared by the tfmot path's `tfsdn.model_report` and the Keras 3 path's
`tfsdn.keras3.model_report`, and read by `tfsdn.plot.plot_connectivity`.
"""

import collections
import dataclasses

import numpy as np

from tfsdn.common import checks


@dataclasses.dataclass
class LayerRow:
  """One weight layer of the inference model.

  Attributes:
    name: Layer name (a `PrunableConcatConv` and its compact conv share it).
    kind: `"prunable"` for `PrunableConcatConv`s, else `"conv"`/`"dense"`.
    input_live: Input channels the layer reads.
    input_offered: Input channels it is offered (its concatenated input).
    filters: Output channels it computes.
    params: Parameters (kernel, bias, and for prunable layers their input
      BatchNormalization).
    macs: Multiply-accumulates for one example.
    prunes: For prunable layers, what their pruned inputs are:
      `"connections"` or `"width"` (`StrippedLayer.prunes`); else "".
  """
  name: str
  kind: str
  input_live: int
  input_offered: int
  filters: int
  params: int
  macs: int
  prunes: str = ""


@dataclasses.dataclass
class BlockConnectivity:
  """Connectivity of one dense block.

  Attributes:
    consumers: Names of the prunable layers reading the block, in order.
    sources: Names of the layers whose feature maps they read.
    matrix: `matrix[i, j]` is the fraction of source j's feature maps that
      consumer i still reads; NaN where i is not offered j at all.
  """
  consumers: list
  sources: list
  matrix: np.ndarray


@dataclasses.dataclass
class ModelReport:
  """What a model computes: per-layer rows, totals and block connectivity."""
  model_name: str
  form: str
  rows: list
  total_params: int
  total_macs: int
  blocks: list

  @property
  def prunable_params(self):
    return sum(r.params for r in self.rows if r.kind == "prunable")

  @property
  def prunable_macs(self):
    return sum(r.macs for r in self.rows if r.kind == "prunable")

  def rows_pruning(self, prunes):
    """Rows of the prunable layers that prune `"connections"` or `"width"`."""
    return [r for r in self.rows if r.prunes == prunes]

  @property
  def widths(self):
    """`(name, live, offered)` of every layer that prunes a width."""
    return [(r.name, r.input_live, r.input_offered)
            for r in self.rows_pruning("width")]

  def to_dict(self):
    return {
        "model_name": self.model_name,
        "form": self.form,
        "total_params": self.total_params,
        "total_macs": self.total_macs,
        "prunable_params": self.prunable_params,
        "prunable_macs": self.prunable_macs,
        "rows": [dataclasses.asdict(r) for r in self.rows],
        "blocks": [{"consumers": b.consumers, "sources": b.sources,
                    "matrix": np.where(np.isnan(b.matrix), None,
                                       b.matrix).tolist()}
                   for b in self.blocks],
    }

  def to_markdown(self):
    """The report as a Markdown table with totals underneath."""
    lines = [
        f"### {self.model_name} ({self.form})", "",
        "| layer | kind | live inputs / offered | filters | params | MACs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in self.rows:
      kind = f"{r.kind}: {r.prunes}" if r.prunes else r.kind
      lines.append(f"| {r.name} | {kind} | {r.input_live} / "
                   f"{r.input_offered} | {r.filters} | {r.params:,} | "
                   f"{r.macs:,} |")
    if self.form == "compact":
      legend = ("Inputs are counted as the model has them: it has no record "
                "of what pruning removed (report the `tfsdn.strip` record for "
                "that).")
    else:
      legend = ("*live inputs / offered*: input channels the layer still "
                "reads / channels of its concatenated input in the dense "
                "model (the same in the dense and pruned tables); "
                "*filters*: output channels it computes, fewer once no layer "
                "reads some of them.")
    lines += [
        "",
        legend,
        "",
        f"Total parameters: {self.total_params:,} (prunable layers: "
        f"{self.prunable_params:,}); total MACs per image: "
        f"{self.total_macs:,} (prunable layers: {self.prunable_macs:,}).",
    ]
    widths = [r for r in self.rows if r.prunes == "width"]
    if widths:
      lines += ["", f"Prunable layers by what they prune: "
                f"{len(self.rows_pruning('connections'))} prune dense "
                f"connections ({sum(r.macs for r in self.rows_pruning('connections')):,} "
                f"MACs), {len(widths)} prune bottleneck widths "
                f"({sum(r.macs for r in widths):,} MACs)."]
    return "\n".join(lines)

  def __str__(self):
    return self.to_markdown()


def comparison_markdown(before, after):
  """A short Markdown table comparing two reports' totals (before / after)."""
  def ratio(a, b):
    return f"{a / b:.3f}" if b else "n/a"
  return "\n".join([
      "| | before | after | after / before |",
      "| --- | --- | --- | --- |",
      f"| parameters | {before.total_params:,} | {after.total_params:,} | "
      f"{ratio(after.total_params, before.total_params)} |",
      f"| parameters in prunable layers | {before.prunable_params:,} | "
      f"{after.prunable_params:,} | "
      f"{ratio(after.prunable_params, before.prunable_params)} |",
      f"| MACs per image | {before.total_macs:,} | {after.total_macs:,} | "
      f"{ratio(after.total_macs, before.total_macs)} |",
  ])


def image_size(model, input_size):
  """The image size a report counts MACs at: `input_size`, or the model's.

  Args:
    model: A functional model (tf_keras or Keras 3).
    input_size: None (the model's own image size, which must be known), or
      `(height, width)` (an int for a square) to count at.

  Returns:
    None (count at the model's own size) or `(height, width)`.

  Raises:
    ValueError: for an `input_size` that is not a positive int or a pair
      of them, an `input_size` for a model without one NHWC image input, or
      no `input_size` for a model whose image size is unknown (MACs depend
      on it).
  """
  shapes = [tuple(t.shape) for t in model.inputs]
  if input_size is None:
    if any(len(s) == 4 and None in s[1:3] for s in shapes):
      raise ValueError(
          f"Model {model.name!r} takes images of unknown size (input shapes "
          f"{shapes}), and its MACs depend on the size: give the size to "
          "count them at, e.g. model_report(model, input_size=(32, 32)). "
          "Received: input_size=None")
    return None
  size = checks.pair("input_size", input_size)
  if len(shapes) != 1 or len(shapes[0]) != 4:
    raise ValueError(
        f"input_size needs a model with one image input [batch, height, "
        f"width, channels]; model {model.name!r} takes {shapes}. Received: "
        f"input_size={input_size!r}")
  return size


def _sized(model, keras, input_size):
  """`model`, or a copy (same layer names) that takes `input_size` images."""
  size = image_size(model, input_size)
  shape = tuple(model.inputs[0].shape)
  if size is None or tuple(shape[1:3]) == size:
    return model
  return keras.models.clone_model(
      model, input_tensors=keras.Input(shape=size + (shape[3],)))


def weight_rows(model, stripped_layers, keras, shapes, input_size=None):
  """Rows for every Conv2D and Dense layer of a stock (compact) model.

  Args:
    model: The compact model.
    stripped_layers: The strip record's `StrippedLayer`s by name: which
      convs were `PrunableConcatConv`s and which layers hold their
      parameters.
    keras: The Keras module of `model` (tf_keras or Keras 3).
    shapes: `layer -> (input shape, output shape)` in that Keras.
    input_size: `(height, width)` of the images to count MACs for; None
      for the model's own size (`image_size`).

  Returns:
    A dict from layer name to `LayerRow`.

  Raises:
    ValueError: from `image_size`.
  """
  model = _sized(model, keras, input_size)
  rows = {}
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      input_shape, output_shape = shapes(layer)
      kh, kw = layer.kernel_size
      cin = int(input_shape[-1])
      out_h, out_w = output_shape[1:3]
      params = layer.count_params()
      kind = "conv"
      record = stripped_layers.get(layer.name)
      if record is not None:
        kind = "prunable"
        params += sum(model.get_layer(name).count_params()
                      for name in record.compact_layers if name != layer.name)
      macs = kh * kw * (cin // layer.groups) * layer.filters * out_h * out_w
      rows[layer.name] = LayerRow(layer.name, kind, cin, cin, layer.filters,
                                  params, int(macs))
    elif isinstance(layer, keras.layers.Dense):
      cin = int(shapes(layer)[0][-1])
      rows[layer.name] = LayerRow(layer.name, "dense", cin, cin, layer.units,
                                  layer.count_params(), cin * layer.units)
  for name, record in stripped_layers.items():
    if name in rows:
      rows[name].input_live = int(np.sum(record.live))
      rows[name].input_offered = len(record.offered)
      rows[name].prunes = record.prunes
  return rows


def connectivity(stripped_layers, source_channels):
  """One `BlockConnectivity` per group of layers offered the same first map."""
  blocks = collections.OrderedDict()
  for name, record in stripped_layers.items():
    if record.offered and record.prunes == "connections":
      blocks.setdefault(record.offered[0][0], []).append(name)
  result = []
  for consumers in blocks.values():
    sources = []
    for name in consumers:
      for source, _ in stripped_layers[name].offered:
        if source not in sources:
          sources.append(source)
    matrix = np.full((len(consumers), len(sources)), np.nan)
    for i, name in enumerate(consumers):
      record = stripped_layers[name]
      for j, source in enumerate(sources):
        hits = [live for (s, _), live in zip(record.offered, record.live)
                if s == source]
        if hits:
          matrix[i, j] = float(np.sum(hits)) / max(source_channels[source],
                                                   len(hits))
    result.append(BlockConnectivity(consumers, sources, matrix))
  return result
