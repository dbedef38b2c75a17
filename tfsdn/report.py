"""`model_report` and `plot_connectivity`: what pruning kept, and what it saved.

A report works on the three forms of a model: dense (nothing pruned), pruned
(masks, possibly still wrapped by tfmot) and compact (`strip_to_compact`).
Parameters and multiply-accumulates (MACs) are those of the inference model
that `strip_to_compact` produces, so a pruned model's report already shows
what stripping will save; pruning bookkeeping (scores, masks) is not counted.
"""

import collections
import dataclasses
import math

import numpy as np

from tfsdn import graph
from tfsdn.compact import strip_to_compact
from tfsdn.compat import keras
from tfsdn.compat import require_functional
from tfsdn.files import atomic_path
from tfsdn.prunable_concat_conv import PrunableConcatConv


@dataclasses.dataclass
class LayerRow:
  """One weight layer of the inference model.

  Attributes:
    name: Layer name (a `PrunableConcatConv` and its compact conv share it).
    kind: `"prunable"` for concatenation-fed convs, else `"conv"`/`"dense"`.
    input_kept: Input channels the layer reads.
    input_total: Input channels it is offered (its concatenated input).
    filters: Output channels it computes.
    params: Parameters (kernel, bias, and for prunable layers their input
      BatchNormalization).
    macs: Multiply-accumulates for one example.
  """
  name: str
  kind: str
  input_kept: int
  input_total: int
  filters: int
  params: int
  macs: int


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
        "| layer | kind | inputs kept / total | filters | params | MACs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in self.rows:
      lines.append(f"| {r.name} | {r.kind} | {r.input_kept} / "
                   f"{r.input_total} | {r.filters} | {r.params:,} | "
                   f"{r.macs:,} |")
    lines += [
        "",
        f"Total parameters: {self.total_params:,} (prunable layers: "
        f"{self.prunable_params:,}); total MACs per image: "
        f"{self.total_macs:,} (prunable layers: {self.prunable_macs:,}).",
    ]
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


def _weight_rows(compact):
  """Rows for every Conv2D and Dense layer of a stock (compact) model."""
  rows = {}
  by_name = {layer.name: layer for layer in compact.layers}
  for layer in compact.layers:
    if isinstance(layer, keras.layers.Conv2D):
      kh, kw = layer.kernel_size
      cin = int(layer.input_shape[-1])
      cout = layer.filters
      out_h, out_w = layer.output_shape[1:3]
      params = layer.count_params()
      bn = by_name.get(f"{layer.name}_bn")
      kind = "conv"
      if bn is not None:
        params += bn.count_params()
        kind = "prunable"
      macs = kh * kw * (cin // layer.groups) * cout * out_h * out_w
      rows[layer.name] = LayerRow(layer.name, kind, cin, cin, cout, params,
                                  int(macs))
    elif isinstance(layer, keras.layers.Dense):
      cin = int(layer.input_shape[-1])
      rows[layer.name] = LayerRow(layer.name, "dense", cin, cin, layer.units,
                                  layer.count_params(), cin * layer.units)
  return rows


def _source_counts(nodes):
  """Output channels of every layer: the feature maps it offers as a source."""
  counts = {}
  for node, layer in nodes:
    output = graph.node_output(node)
    counts[layer.name] = graph.channels(output) if output.shape.rank else 1
  return counts


def _pruned_reads(model):
  """For each PrunableConcatConv: (offered sources, kept mask)."""
  sources = graph.channel_sources(model)
  nodes = graph.topological_nodes(model)
  reads = {}
  for node, layer in nodes:
    if isinstance(layer, PrunableConcatConv):
      offered = [s for t in graph.node_inputs(node) for s in sources[id(t)]]
      reads[layer.name] = (offered, graph.kept_mask(layer))
  return reads, _source_counts(nodes)


def _compact_reads(model):
  """For each compact prunable conv: (offered sources, kept mask)."""
  sources = graph.channel_sources(model)
  nodes = graph.topological_nodes(model)
  producer = {id(graph.node_output(node)): (node, layer)
              for node, layer in nodes}
  names = {layer.name for layer in model.layers}
  reads = {}
  for node, layer in nodes:
    if not (isinstance(layer, keras.layers.Conv2D) and
            f"{layer.name}_bn" in names):
      continue
    tensor = graph.node_inputs(node)[0]
    read = sources[id(tensor)]
    offered = read
    # Walk back through ReLU/BN to a channel gather, whose input is offered.
    while id(tensor) in producer:
      prev_node, prev_layer = producer[id(tensor)]
      if graph.is_channel_gather(prev_layer, prev_node):
        offered = sources[id(graph.node_inputs(prev_node)[0])]
        break
      if not graph.is_channel_wise(prev_layer):
        break
      tensor = graph.node_inputs(prev_node)[0]
    read_set = collections.Counter(read)
    kept = np.array([read_set[s] > 0 for s in offered])
    reads[layer.name] = (offered, kept)
  return reads, _source_counts(nodes)


def _connectivity(reads, counts):
  blocks = collections.OrderedDict()
  for name, (offered, kept) in reads.items():
    if not offered:
      continue
    blocks.setdefault(offered[0][0], []).append(name)
  result = []
  for consumers in blocks.values():
    sources = []
    for name in consumers:
      for source, _ in reads[name][0]:
        if source not in sources:
          sources.append(source)
    matrix = np.full((len(consumers), len(sources)), np.nan)
    for i, name in enumerate(consumers):
      offered, kept = reads[name]
      for j, source in enumerate(sources):
        hits = [k for (s, _), k in zip(offered, kept) if s == source]
        if hits:
          matrix[i, j] = float(np.sum(hits)) / max(counts[source], len(hits))
    result.append(BlockConnectivity(consumers, sources, matrix))
  return result


def model_report(model):
  """Per-layer channels kept, parameters and MACs, totals, and connectivity.

  Example:

  ```python
  before = tfsdn.model_report(dense_model)
  after = tfsdn.model_report(tfsdn.strip_to_compact(pruned_model))
  print(before.to_markdown(), after.to_markdown())
  print(tfsdn.comparison_markdown(before, after))
  ```

  Args:
    model: A functional tf_keras model: dense, pruned (wrapped or stripped)
      or compact. Nested functional models are inlined first.

  Returns:
    A `ModelReport`.

  Raises:
    TypeError: for Keras 3 objects and subclassed models.
  """
  require_functional(model)
  stripped = graph.flatten(graph.strip_wrappers(model))
  has_prunable = any(isinstance(l, PrunableConcatConv) for l in stripped.layers)
  if has_prunable:
    compact = strip_to_compact(stripped)
    reads, counts = _pruned_reads(stripped)
    pruned = any(not kept.all() for _, kept in reads.values())
    form = "pruned" if pruned else "dense"
  else:
    compact = stripped
    reads, counts = _compact_reads(stripped)
    form = "compact"
  rows = _weight_rows(compact)
  for name, (offered, kept) in reads.items():
    if name in rows:
      rows[name].input_kept = int(np.sum(kept))
      rows[name].input_total = len(offered)
  total_macs = sum(r.macs for r in rows.values())
  return ModelReport(model.name, form, list(rows.values()),
                     int(compact.count_params()), int(total_macs),
                     _connectivity(reads, counts))


def plot_connectivity(model, path):
  """Writes each dense block's connectivity matrix as a PNG heatmap.

  One panel per block: rows are the consuming layers, columns the layers
  whose feature maps they are offered; colour is the fraction still read.
  Needs matplotlib (`pip install tfsdn[plot]`).

  Args:
    model: Any model `model_report` accepts.
    path: Where to write the PNG; written to a temporary file, then renamed.

  Returns:
    The `ModelReport` that was plotted.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "plot_connectivity needs matplotlib: pip install 'tfsdn[plot]'") from e
  report = model_report(model)
  if not report.blocks:
    raise ValueError(f"Model {model.name!r} has no dense block to plot.")
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
