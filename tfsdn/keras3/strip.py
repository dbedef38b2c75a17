"""Strip for Keras 3: a compact model of stock layers without pruned channels.

The same rewrite as the tfmot path's `tfsdn.strip`, on a Keras 3 functional
graph with nested models inlined (`tfsdn.keras3.graph`): a backward pass
finds which channels of every tensor some consumer reads (a
`PrunableConcatConv` reads its live inputs; Conv2D, Dense and unknown
layers read everything; channel-wise layers and concatenations pass reads
through), filters no one reads are dropped, the filters of each producer
whose order no model output shows are ordered so that its consumers read
few contiguous ranges (`tfsdn.common.channel_order`, shared with the tfmot
path), and every
`PrunableConcatConv` becomes slices + Concatenate + BatchNormalization +
ReLU + Conv2D. The compact model has the same function (checked by the
tests to 1e-4) and loads with plain `keras.saving.load_model`.
"""

import dataclasses

import keras
import numpy as np

from tfsdn.common import channel_order
from tfsdn.common import checks
from tfsdn.common import deploy_target
from tfsdn.common import provenance
from tfsdn.keras3 import graph
from tfsdn.keras3.layer import PrunableConcatConv


@dataclasses.dataclass
class StrippedLayer:
  """What strip kept of one `PrunableConcatConv`.

  The same record as the tfmot path's `tfsdn.compact.StrippedLayer`.

  Attributes:
    name: The layer's name; its compact Conv2D has the same name.
    offered: One `(source layer name, channel)` per input channel.
    live: Boolean vector over its input channels: True where it reads one.
    filters: Output channels before the strip.
    filters_computed: Output channels the compact conv computes (0: no one
      reads the layer's output, and it is removed).
    compact_layers: Names of the compact layers holding its parameters.
    prunes: `"connections"` (it reads feature maps other layers read too)
      or `"width"` (it alone reads one layer's output: a DenseNet-B
      bottleneck's 3x3 conv).
  """
  name: str
  offered: list
  live: np.ndarray
  filters: int
  filters_computed: int
  compact_layers: tuple = ()
  prunes: str = "connections"


@dataclasses.dataclass
class Stripped:
  """The result of `strip`: the compact model and what each layer kept.

  Attributes:
    model: The compact model (stock Keras 3 layers and ops).
    source_name: Name of the stripped model.
    layers: `StrippedLayer` per `PrunableConcatConv` name, in model order.
    source_channels: Output channels of every layer before the strip.
  """
  model: keras.Model
  source_name: str
  layers: dict
  source_channels: dict

  @property
  def pruned(self):
    """True if some layer reads fewer channels than it is offered."""
    return any(not layer.live.all() for layer in self.layers.values())


_nodes = graph.nodes
_channels = graph.channels


def _inputs(node):
  return list(node.input_tensors)


def _channelwise(layer, node):
  """True for a layer that acts on each channel alone (reads pass through
  unchanged): channel-wise 4-D layers and global pooling."""
  return (graph.passes_channel_order(layer, node) and
          not graph.is_channel_concat(layer))


def _is_conv(layer):
  return type(layer) is keras.layers.Conv2D and layer.groups == 1  # pylint: disable=unidiomatic-typecheck


def _is_dense(layer, node):
  return type(layer) is keras.layers.Dense and len(node.input_tensors[0].shape) == 2  # pylint: disable=unidiomatic-typecheck


def _reorderable(model):
  """`channel_order.reorderable` on this graph: ids of the tensors whose
  channels strip may reorder (never a model output's)."""
  readers = {}
  for node in _nodes(model):
    layer = node.operation
    if node.is_input:
      continue
    if isinstance(layer, PrunableConcatConv) or _is_conv(layer) or _is_dense(
        layer, node):
      how = channel_order.ANY_ORDER, None
    elif graph.passes_channel_order(layer, node):
      how = channel_order.PASSES_ORDER, id(node.output_tensors[0])
    else:
      how = channel_order.FIXED_ORDER, None
    for tensor in _inputs(node):
      readers.setdefault(id(tensor), []).append(how)
  tensors = [id(node.output_tensors[0]) for node in _nodes(model)
             if len(node.output_tensors[0].shape) in (2, 4)]
  return channel_order.reorderable(tensors, readers,
                                   [id(t) for t in model.outputs])


def _reads(model):
  """Per tensor id, the boolean channel vectors its consumers read."""
  reads = {id(t): [np.ones(_channels(t), bool)] for t in model.outputs}
  for node in reversed(_nodes(model)):
    layer = node.operation
    if node.is_input:
      continue
    outputs = node.output_tensors
    wanted = [np.any(reads.get(id(t), [np.zeros(_channels(t), bool)]), axis=0)
              for t in outputs]
    inputs = _inputs(node)
    if isinstance(layer, PrunableConcatConv):
      rows = [layer.live_mask()] if wanted[0].any() else []
    elif _channelwise(layer, node) or graph.is_channel_concat(layer):
      rows = reads.get(id(outputs[0]), [])
    else:
      rows = [np.ones(sum(_channels(t) for t in inputs), bool)] if any(
          w.any() for w in wanted) else []
    bounds = np.cumsum([0] + [_channels(t) for t in inputs])
    for row in rows:
      for tensor, start, stop in zip(inputs, bounds, bounds[1:]):
        reads.setdefault(id(tensor), []).append(row[start:stop])
  return reads


CHANNEL_READS = ("slice", "gather")


def strip(model, slice_cost_macs=None, channel_reads=None,
          max_concat_inputs=None, reuse_concats=None, check_function=True,
          target=None):
  """Rebuilds `model` without its pruned input channels and dead filters.

  `slice_cost_macs` means what it means in `tfsdn.strip`: a layer also
  reads the channels in a gap between two ranges it needs when they cost it
  at most that many MACs, with zero kernel rows (fewer slices, more MACs, the
  same function). `channel_reads="gather"`, as in `tfsdn.strip`,
  concatenates the whole feature maps a layer reads and takes its channels
  with one `keras.ops.take` (a Gather in ONNX, run channels-first by
  `tfsdn.keras3.export` on the TensorFlow backend). `max_concat_inputs`,
  as in `tfsdn.strip`, builds larger concatenations from concatenations of
  at most that many inputs (5 for LiteRT's XNNPACK delegate), each made
  once. `reuse_concats=True`, as in `tfsdn.strip`, lets a layer's
  concatenation start from an earlier one that joins only whole feature
  maps this layer also reads (a DenseNet's running concatenation; slices
  are not shared between layers here, so only whole maps count).

  `target`, a `tfsdn.Target`, chooses the options left at None for the
  runtime and batch size the model will be served at, as in `tfsdn.strip`
  (the same backend-free planner, `tfsdn.common.deploy_target`); without one,
  for `tfsdn.common.deploy_target.DEFAULT_TARGET` (TensorFlow at batch 1). For
  exact reads pass `channel_reads="slice", slice_cost_macs=0` (a gather
  reads a multiple of 16 channels when it reads 16 or more, as in
  `tfsdn.strip`).

  The model's outputs keep their channels in their order (a feature
  extractor's features, such as a DenseNet's `avg_pool`): only filters
  that no model output shows are reordered. Nested functional and
  Sequential models (a backbone under a head) are inlined first, as
  `tfsdn.strip` does. The record is the tfmot path's: a layer no one reads
  any more is removed, with no live input, 0 filters computed and no
  compact layers.

  Args:
    model: A functional or Sequential Keras 3 model with
      `tfsdn.keras3.PrunableConcatConv` layers, in nested models or not.
    slice_cost_macs: The MACs one more slice costs in the target runtime,
      a number >= 0; 0 reads exactly the live channels with slices (a
      gather pads its reads). None: chosen for
      `target` (0 for a model of unknown image size).
    channel_reads: `"slice"` or `"gather"`; None: chosen for `target`, as
      in `tfsdn.strip` (`"gather"` for ONNX Runtime, else `"slice"`).
    max_concat_inputs: None (no bound, or 5 for a LiteRT target) or an
      integer >= 2.
    reuse_concats: A bool (see above); None: True.
    check_function: If True (the default), the compact model and `model`
      run in inference mode on one batch of random pixels and must agree
      (`tfsdn.common.checks.same_function`: 1e-4 in float32), as in `tfsdn.strip`;
      False skips that check, for speed.
    target: A `tfsdn.Target`, or None (see above).

  Returns:
    A `Stripped`: `model` is the compact model (stock Keras 3 layers and
    ops), `layers` what each `PrunableConcatConv` kept.

  Raises:
    TypeError: for a tf_keras or subclassed model (nested or not), or a
      Sequential model without an input shape.
    ValueError: for a nested model with several outputs, two layers of the
      same name in nested models, a negative or non-finite `slice_cost_macs`, an
      unknown `channel_reads`, or a `max_concat_inputs` that is not None or
      an integer >= 2.
    TypeError: if `reuse_concats` or `check_function` is not a bool, or
      `target` is not a `tfsdn.Target`.
    RuntimeError: if `check_function` finds the compact model computing
      another function.
  """
  flat = graph.flatten(model)  # Checks the model's type first.
  original = model
  by_default = target is None and all(option is None for option in (
      slice_cost_macs, channel_reads, max_concat_inputs, reuse_concats))
  check_function = checks.boolean("check_function", check_function)
  source_name, model = model.name, flat
  known = all(len(t.shape) == 4 and None not in tuple(t.shape[1:3])
              for t in model.inputs)
  options = deploy_target.resolve_options(target, dict(
      slice_cost_macs=slice_cost_macs, channel_reads=channel_reads,
      max_concat_inputs=max_concat_inputs, reuse_concats=reuse_concats),
      known)
  slice_cost_macs, channel_reads = (options["slice_cost_macs"],
                                    options["channel_reads"])
  max_concat_inputs, reuse_concats = (options["max_concat_inputs"],
                                      options["reuse_concats"])
  slice_cost_macs = checks.real("slice_cost_macs", slice_cost_macs, low=0)
  if channel_reads not in CHANNEL_READS:
    raise ValueError(f"channel_reads must be one of {CHANNEL_READS}. "
                     f"Received: channel_reads={channel_reads!r}")
  concat = _Concatenations(checks.concat_limit(max_concat_inputs),
                           checks.boolean("reuse_concats", reuse_concats))
  reads = _reads(model)
  reorderable = _reorderable(model)
  sources = graph.channel_sources(model)
  source_channels = {}
  for node in _nodes(model):
    for tensor in node.output_tensors:
      source_channels[node.operation.name] = _channels(tensor)
  # New tensor per old tensor id, and the old channel ids it holds, in order.
  new, kept = {}, {}
  for tensor in model.inputs:
    new[id(tensor)] = None  # set below with the new inputs
  new_inputs = []
  for tensor in model.inputs:
    fresh = keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype,
                        name=tensor.name)
    new_inputs.append(fresh)
    new[id(tensor)] = fresh
    kept[id(tensor)] = np.arange(_channels(tensor))
  records = {}
  for node in _nodes(model):
    if node.is_input:
      continue
    layer = node.operation
    inputs = _inputs(node)
    output = node.output_tensors[0]
    needed = np.any(reads.get(id(output), [np.zeros(_channels(output), bool)]),
                    axis=0)
    offered = [s for t in inputs for s in sources[id(t)]]
    if not needed.any():
      # No one reads this output (a removed layer, or what follows it): a
      # removed PrunableConcatConv reads nothing and computes nothing, as
      # in the tfmot path's record.
      if isinstance(layer, PrunableConcatConv):
        records[layer.name] = StrippedLayer(
            layer.name, offered, np.zeros(layer.input_channels, bool),
            layer.filters, 0)
      continue
    # Filters in an order that makes their readers' reads contiguous,
    # unless a model output shows their order.
    reorder = id(output) in reorderable
    if isinstance(layer, PrunableConcatConv):
      records[layer.name] = _strip_concat_conv(layer, inputs, output, needed,
                                               reads, new, kept,
                                               slice_cost_macs,
                                               channel_reads == "gather",
                                               concat, reorder)
      records[layer.name].offered = offered
    elif _is_conv(layer):
      _strip_conv(layer, inputs[0], output, needed, reads, new, kept, reorder)
    elif _is_dense(layer, node):
      _strip_dense(layer, inputs[0], output, new, kept)
    elif _channelwise(layer, node):
      _strip_channelwise(layer, inputs[0], output, needed, new, kept)
    elif graph.is_channel_concat(layer):
      parts, ids = [], []
      bounds = np.cumsum([0] + [_channels(t) for t in inputs])
      for tensor, start in zip(inputs, bounds):
        want = needed[start:start + _channels(tensor)]
        if not want.any():
          continue
        part, part_ids = _select(tensor, np.flatnonzero(want), new, kept)
        parts.append(part)
        ids.append(part_ids + start)
      new[id(output)] = concat(concat.reuse.reused_prefix(parts), layer.name,
                               last=layer.name)
      kept[id(output)] = np.concatenate(ids)
    else:
      _copy_layer(layer, node, inputs, output, new, kept)
  outputs = [new[id(t)] for t in model.outputs]
  compact = keras.Model(
      new_inputs if len(new_inputs) > 1 else new_inputs[0],
      outputs if len(outputs) > 1 else outputs[0],
      name=f"{model.name}_compact")
  _classify(records, model, sources)
  if check_function:
    checks.same_function(
        original, compact, _predict, [t.shape for t in model.inputs],
        low_precision=model.compute_dtype != "float32")
  if by_default:
    provenance.remember(compact, original)
  return Stripped(compact, source_name, records, source_channels)


def _predict(model, images):
  outputs = model(images if len(images) > 1 else images[0], training=False)
  return [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(outputs)]


def _classify(records, model, sources):
  """Sets `prunes` of each record: "width" if it alone reads one layer.

  As the tfmot path decides it: a layer prunes a width when everything it
  is offered comes from one producer that no other layer reads (through
  concatenations and channel-wise layers such as dropout).
  """
  readers = {}
  for node in _nodes(model):
    layer = node.operation
    if node.is_input or graph.is_channel_concat(layer) or (
        graph.passes_channels(layer, node)):
      continue
    for tensor in _inputs(node):
      for source in {s for s, _ in sources[id(tensor)]}:
        readers.setdefault(source, set()).add(layer.name)
  for record in records.values():
    offered = {s for s, _ in record.offered}
    if len(offered) == 1 and readers.get(next(iter(offered))) == {
        record.name}:
      record.prunes = "width"


class _Concatenations:
  """Channel concatenations of at most `max_inputs` inputs (None: any),
  as `channel_order.bounded_concat` builds them; each concatenation of the
  same tensors is made once and shared by every layer that needs it.
  With `reuse`, a layer's concatenation can start from earlier ones
  (`channel_order.ConcatReuse`)."""

  def __init__(self, max_inputs, reuse=False):
    self.max_inputs = max_inputs
    self._made = {}
    self.reuse = channel_order.ConcatReuse(_channels, reuse)

  def __call__(self, parts, name, last=None):
    """`parts` concatenated; the last concatenation named `last` (or
    `{name}_concat`) when it is made here."""

    def concat(group, group_name):
      key = tuple(id(part) for part in group)
      if key not in self._made:
        self._made[key] = self.reuse.joined(keras.layers.Concatenate(
            name=group_name or last or f"{name}_concat")(group), group)
      return self._made[key]

    return channel_order.bounded_concat(parts, self.max_inputs, concat, name)



def _ranges(tensor, channels, kept, max_gap):
  """Ranges of the new tensor holding `channels` (old ids), gaps merged."""
  order = kept[id(tensor)]
  return channel_order.merge_runs(
      channel_order.runs(np.flatnonzero(np.isin(order, channels))),
      len(order), max_gap)


def _gather(wanted, new, kept, max_gap, name, concat):
  """The whole new tensors, concatenated, then one take of the channels read.

  Args:
    wanted: `(tensor, old channel ids read, offset of the tensor in the
      layer's input)` per input read, as `_select`'s callers pass them.

  Returns:
    `(tensor, ids)`: the channels read (gaps merged as in `_select`, then
    padded with unread ones to a multiple of
    `channel_order.GATHER_CHANNEL_MULTIPLE`) and their ids in the layer's
    input, in order.
  """
  ranges = channel_order.pad_to_multiple(  # A count ONNX Runtime blocks.
      [_ranges(tensor, want, kept, max_gap) for tensor, want, _ in wanted],
      [len(kept[id(tensor)]) for tensor, _, _ in wanted],
      channel_order.GATHER_CHANNEL_MULTIPLE)
  index, ids, base = [], [], 0
  for (tensor, _, offset), tensor_ranges in zip(wanted, ranges):
    order = kept[id(tensor)]
    positions = channel_order.positions(tensor_ranges)
    index.append(base + positions)
    ids.append(order[positions] + offset)
    base += len(order)
  whole, placed = concat.reuse.reused([new[id(t)] for t, _, _ in wanted])
  x = concat(whole, name)
  index = np.argsort(placed)[np.concatenate(index)]
  if not np.array_equal(index, np.arange(base)):
    x = keras.ops.take(x, index, axis=-1)
  return x, np.concatenate(ids)


def _slices(tensor, channels, new, kept, max_gap=0):
  """`(parts, ids)`: the new tensor's ranges holding `channels` (old ids),
  gaps merged as in `_select`, and the old ids of the channels they hold."""
  source, order = new[id(tensor)], kept[id(tensor)]
  ranges = _ranges(tensor, channels, kept, max_gap)
  if ranges == [(0, len(order))]:
    return [source], order
  return ([source[..., start:stop] for start, stop in ranges],
          order[channel_order.positions(ranges)])


def _select(tensor, channels, new, kept, max_gap=0):
  """The new tensor's `channels` (old ids), sliced in contiguous ranges.

  Ranges separated by at most `max_gap` channels are read as one
  (`channel_order.merge_runs`), so more channels may come back.

  Returns:
    `(tensor, ids)`: a tensor holding (at least) those channels and their
    old ids in its order (the new tensor's order, not `channels`' order).
  """
  parts, ids = _slices(tensor, channels, new, kept, max_gap)
  part = parts[0] if len(parts) == 1 else keras.ops.concatenate(parts, axis=-1)
  return part, ids


def _filter_order(output, needed, reads, reorder=True):
  """Kept filters (old ids) in the order that makes consumers' reads few
  contiguous ranges; with `reorder` False, in their own order."""
  keep = np.flatnonzero(needed)
  rows = np.array([row[keep] for row in reads.get(id(output), [])], bool)
  if not len(rows) or not reorder:
    return keep
  return keep[channel_order.order_channels(rows)]


def _strip_conv(layer, tensor, output, needed, reads, new, kept, reorder):
  source, order = _select(tensor, np.arange(_channels(tensor)), new, kept)
  filters = _filter_order(output, needed, reads, reorder)
  config = layer.get_config()
  config["filters"] = len(filters)
  conv = keras.layers.Conv2D.from_config(config)
  result = conv(source)
  weights = [w[:, :, order][..., filters] if w.ndim == 4 else w[filters]
             for w in layer.get_weights()]
  conv.set_weights(weights)
  new[id(output)], kept[id(output)] = result, filters


def _strip_dense(layer, tensor, output, new, kept):
  source, order = _select(tensor, np.arange(_channels(tensor)), new, kept)
  dense = keras.layers.Dense.from_config(layer.get_config())
  result = dense(source)
  weights = layer.get_weights()
  dense.set_weights([weights[0][order]] + weights[1:])
  new[id(output)] = result
  kept[id(output)] = np.arange(_channels(output))


def _strip_channelwise(layer, tensor, output, needed, new, kept):
  source, order = _select(tensor, np.flatnonzero(needed), new, kept)
  if isinstance(layer, keras.layers.BatchNormalization):
    config = layer.get_config()
    clone = keras.layers.BatchNormalization.from_config(config)
    result = clone(source)
    clone.set_weights([w[order] for w in layer.get_weights()])
  else:
    clone = layer.__class__.from_config(layer.get_config())
    result = clone(source)
    clone.set_weights(layer.get_weights())
  new[id(output)], kept[id(output)] = result, order


def _copy_layer(layer, node, inputs, output, new, kept):
  for tensor in inputs:
    if not np.array_equal(kept[id(tensor)], np.arange(_channels(tensor))):
      raise ValueError(
          f"strip cannot rewrite layer {layer.name!r} "
          f"({type(layer).__name__}): its input channels were pruned or "
          "reordered, and it is not a layer strip knows to act per channel.")
  args = [new[id(t)] for t in inputs]
  clone = layer.__class__.from_config(layer.get_config())
  result = clone(args if len(args) > 1 else args[0])
  clone.set_weights(layer.get_weights())
  del node
  new[id(output)] = result
  kept[id(output)] = np.arange(_channels(output))


def _strip_concat_conv(layer, inputs, output, needed, reads, new, kept,
                       slice_cost_macs, gather, concat, reorder):
  live = layer.live_mask()
  record = StrippedLayer(layer.name, [], live, layer.filters, 0)
  filters = _filter_order(output, needed, reads, reorder)
  max_gap = channel_order.max_gap(slice_cost_macs, output.shape[1:3],
                                  layer.kernel_size, len(filters), layer.name)
  bounds = np.cumsum([0] + [_channels(t) for t in inputs])
  wanted = []
  for tensor, start in zip(inputs, bounds):
    want = np.flatnonzero(live[start:start + _channels(tensor)])
    if len(want):
      wanted.append((tensor, want, start))
  if gather:
    x, read = _gather(wanted, new, kept, max_gap, layer.name, concat)
  else:
    parts, ids = [], []
    for tensor, want, start in wanted:
      tensor_parts, part_ids = _slices(tensor, want, new, kept, max_gap)
      parts += tensor_parts
      ids.append(part_ids + start)
    parts, order = concat.reuse.reused(parts)
    read = np.concatenate(ids)[order]
    x = concat(parts, layer.name)
  bn = keras.layers.BatchNormalization(
      momentum=layer.bn_momentum, epsilon=layer.bn_epsilon,
      name=f"{layer.name}_bn")
  x = bn(x)
  bn.set_weights([w[read] for w in layer.batch_norm.get_weights()])
  x = keras.layers.ReLU(name=f"{layer.name}_relu")(x)
  conv = keras.layers.Conv2D(
      len(filters), layer.kernel_size, strides=layer.strides,
      padding=layer.padding, use_bias=False, name=layer.name)
  x = conv(x)
  kernel = layer.conv.kernel.numpy()[:, :, read][..., filters]
  kernel[:, :, ~live[read]] = 0.0  # Read only to save a slice.
  conv.set_weights([kernel])
  new[id(output)], kept[id(output)] = x, filters
  record.filters_computed = len(filters)
  # The layers holding its parameters, as in the tfmot path's record (not
  # its concatenation, which other layers may share, nor its ReLU).
  record.compact_layers = (f"{layer.name}_bn", layer.name)
  return record
