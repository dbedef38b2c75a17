"""Strip for Keras 3: a compact model of stock layers without pruned channels.

The same rewrite as the tfmot path's `tfsdn.strip`, on a Keras 3 functional
graph: a backward pass finds which channels of every tensor some consumer
reads (a `PrunableConcatConv` reads its live inputs; Conv2D, Dense and
unknown layers read everything; channel-wise layers and concatenations pass
reads through), filters no one reads are dropped, each producer's filters
are ordered so that its consumers read few contiguous ranges
(`tfsdn.channel_order`, shared with the tfmot path), and every
`PrunableConcatConv` becomes slices + Concatenate + BatchNormalization +
ReLU + Conv2D. The compact model has the same function (checked by the
tests to 1e-4) and loads with plain `keras.saving.load_model`.
"""

import dataclasses

import keras
import numpy as np

from tfsdn import channel_order
from tfsdn import checks
from tfsdn.keras3.checks import require_keras3_model
from tfsdn.keras3.layer import PrunableConcatConv

# Layers that act on each channel alone: reads pass through unchanged.
_CHANNELWISE = (keras.layers.BatchNormalization, keras.layers.ReLU,
                keras.layers.Activation, keras.layers.Dropout,
                keras.layers.AveragePooling2D, keras.layers.MaxPooling2D,
                keras.layers.GlobalAveragePooling2D,
                keras.layers.GlobalMaxPooling2D, keras.layers.ZeroPadding2D)


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


def _nodes(model):
  """The model's nodes in execution order."""
  depths = sorted(model._nodes_by_depth, reverse=True)  # pylint: disable=protected-access
  return [node for depth in depths for node in model._nodes_by_depth[depth]]  # pylint: disable=protected-access


def _inputs(node):
  return list(node.input_tensors)


def _channels(tensor):
  return int(tensor.shape[-1])


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
    elif isinstance(layer, _CHANNELWISE):
      rows = reads.get(id(outputs[0]), [])
    elif isinstance(layer, keras.layers.Concatenate) and _last_axis(layer):
      rows = reads.get(id(outputs[0]), [])
    else:
      rows = [np.ones(sum(_channels(t) for t in inputs), bool)] if any(
          w.any() for w in wanted) else []
    bounds = np.cumsum([0] + [_channels(t) for t in inputs])
    for row in rows:
      for tensor, start, stop in zip(inputs, bounds, bounds[1:]):
        reads.setdefault(id(tensor), []).append(row[start:stop])
  return reads


def _last_axis(layer):
  return layer.axis in (-1, 3)


CHANNEL_READS = ("slice", "gather")


def strip(model, slice_cost_macs=0, channel_reads="slice",
          max_concat_inputs=None, reuse_concats=False):
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

  Args:
    model: A functional Keras 3 model with `tfsdn.keras3.PrunableConcatConv`
      layers.
    slice_cost_macs: The MACs one more slice costs in the target runtime,
      a number >= 0; 0 (the default) reads exactly the live channels.
    channel_reads: `"slice"` (the default) or `"gather"`.
    max_concat_inputs: None (the default) or an integer >= 2.
    reuse_concats: A bool (see above); False by default.

  Returns:
    A `Stripped`: `model` is the compact model (stock Keras 3 layers and
    ops), `layers` what each `PrunableConcatConv` kept.

  Raises:
    TypeError: for a tf_keras or subclassed model.
    ValueError: for a negative or non-finite `slice_cost_macs`, an
      unknown `channel_reads`, or a `max_concat_inputs` that is not None or
      an integer >= 2.
    TypeError: if `reuse_concats` is not a bool.
  """
  require_keras3_model(model)
  slice_cost_macs = checks.real("slice_cost_macs", slice_cost_macs, low=0)
  if channel_reads not in CHANNEL_READS:
    raise ValueError(f"channel_reads must be one of {CHANNEL_READS}. "
                     f"Received: channel_reads={channel_reads!r}")
  concat = _Concatenations(checks.concat_limit(max_concat_inputs),
                           checks.boolean("reuse_concats", reuse_concats))
  reads = _reads(model)
  readers = {}  # tensor id -> number of nodes reading it
  for node in _nodes(model):
    for tensor in _inputs(node):
      readers[id(tensor)] = readers.get(id(tensor), 0) + 1
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
    if not needed.any():
      # No one reads this output (a removed layer, or what follows it).
      if isinstance(layer, PrunableConcatConv):
        records[layer.name] = StrippedLayer(layer.name, [], layer.live_mask(),
                                            layer.filters, 0)
        records[layer.name].offered = _offered(inputs)
      continue
    if isinstance(layer, PrunableConcatConv):
      records[layer.name] = _strip_concat_conv(layer, inputs, output, needed,
                                               reads, new, kept,
                                               slice_cost_macs,
                                               channel_reads == "gather",
                                               concat)
      records[layer.name].offered = _offered(inputs)
      if len(inputs) == 1 and readers.get(id(inputs[0])) == 1:
        records[layer.name].prunes = "width"
    elif isinstance(layer, keras.layers.Conv2D) and layer.groups == 1 and (
        type(layer) is keras.layers.Conv2D):  # pylint: disable=unidiomatic-typecheck
      _strip_conv(layer, inputs[0], output, needed, reads, new, kept)
    elif type(layer) is keras.layers.Dense and len(inputs[0].shape) == 2:  # pylint: disable=unidiomatic-typecheck
      _strip_dense(layer, inputs[0], output, new, kept)
    elif isinstance(layer, _CHANNELWISE):
      _strip_channelwise(layer, inputs[0], output, needed, new, kept)
    elif isinstance(layer, keras.layers.Concatenate) and _last_axis(layer):
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
  return Stripped(compact, model.name, records, source_channels)


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



def _offered(inputs):
  """`(source layer name, channel)` per channel of a layer's inputs."""
  return [(tensor._keras_history.operation.name, channel)  # pylint: disable=protected-access
          for tensor in inputs for channel in range(_channels(tensor))]


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
    `(tensor, ids)`: the channels read (gaps merged as in `_select`) and
    their ids in the layer's input, in order.
  """
  index, ids, base = [], [], 0
  for tensor, want, offset in wanted:
    order = kept[id(tensor)]
    positions = channel_order.positions(
        _ranges(tensor, want, kept, max_gap))
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


def _filter_order(output, needed, reads):
  """Kept filters (old ids) in the order that makes consumers' reads few
  contiguous ranges."""
  keep = np.flatnonzero(needed)
  rows = np.array([row[keep] for row in reads.get(id(output), [])], bool)
  if not len(rows):
    return keep
  return keep[channel_order.order_channels(rows)]


def _strip_conv(layer, tensor, output, needed, reads, new, kept):
  source, order = _select(tensor, np.arange(_channels(tensor)), new, kept)
  filters = _filter_order(output, needed, reads)
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
                       slice_cost_macs, gather, concat):
  live = layer.live_mask()
  record = StrippedLayer(layer.name, [], live, layer.filters, 0)
  if not needed.any():
    return record  # No one reads its output: removed.
  filters = _filter_order(output, needed, reads)
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
  # Not its concatenation, which other layers may share (and which holds
  # no parameter).
  record.compact_layers = (f"{layer.name}_bn", f"{layer.name}_relu",
                           layer.name)
  return record
