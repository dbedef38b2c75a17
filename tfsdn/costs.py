"""What one input channel of a prunable layer costs, and dense model costs.

The cost model of `tfsdn.GlobalAllocation` (`tfsdn.allocation`): MACs of a
conv per input channel, the dense model's MACs counted as `model_report`
counts them, and the layer-wise sparsity with the same estimated cost.
"""

from tfsdn import graph
from tfsdn.common import liveness
from tfsdn.compat import keras
from tfsdn.common.allocation import layer_costs
from tfsdn.common.allocation import least_layerwise_sparsity
from tfsdn.prunable_concat_conv import PrunableConcatConv
from tfsdn.prunable_concat_conv import prunable_layers
from tfsdn.prunable_concat_conv import unwrap


def dense_macs(model):
  """MACs per example of `model` with every input channel live.

  Counts Conv2D, Dense and PrunableConcatConv layers (wrapped or not,
  nested models included) as `model_report` does.
  """
  total = 0
  for layer in _all_layers(model):
    if isinstance(layer, PrunableConcatConv):
      total += layer_costs([layer], "macs")[0] * layer.input_channels
    elif isinstance(layer, keras.layers.Conv2D):
      kh, kw = layer.kernel_size
      height, width = layer.output_shape[1:3]
      total += (kh * kw * int(layer.input_shape[-1]) // layer.groups *
                layer.filters * height * width)
    elif isinstance(layer, keras.layers.Dense):
      total += int(layer.input_shape[-1]) * layer.units
  return int(total)


def _all_layers(model):
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)
    else:
      yield unwrap(layer)


def dense_cost(model, budget, layers):
  """The dense cost of `model`: its MACs, or with `budget="channels"` the
  input channels of `layers` (the prunable layers a budget covers)."""
  if budget == "channels":
    return sum(layer.input_channels for layer in layers)
  return dense_macs(model)


def layerwise_sparsity(model, keep, budget="macs"):
  """The least per-layer sparsity whose estimated cost is <= `keep`.

  The layer-wise counterpart of a `GlobalAllocation` budget, for comparing
  the two at equal cost (the same estimate: pruned inputs only).

  Args:
    model: A model with `PrunableConcatConv`s (every one is pruned).
    keep: The budget, a fraction of the dense cost in (0, 1].
    budget: `"macs"` or `"channels"`.

  Returns:
    A sparsity in [0, 1), a multiple of 1/1000.

  Raises:
    ValueError: if no sparsity below 1 reaches the budget.
  """
  layers = prunable_layers(model)
  return least_layerwise_sparsity(
      layers, dense_cost(model, budget, layers), keep, budget, model.name)


def channel_graph(model):
  """`tfsdn.common.liveness` `Node`s of `model`, wrapped or not, nested included.

  Nested functional models are walked through (their inputs are the outer
  tensors they are called on), tfmot wrappers are seen through, so the
  description is that of the flat model the strip step builds from.

  Args:
    model: A functional tf_keras model.

  Returns:
    `(nodes, outputs)`: the nodes in topological order and the keys of the
    model's outputs.
  """
  nodes, alias = [], {}

  def key(tensor):
    return alias.get(id(tensor), id(tensor))

  def walk(current):
    for node, layer in graph.topological_nodes(current):
      layer = unwrap(layer)
      if graph.is_input(node):
        continue
      inputs = graph.node_inputs(node)
      output = graph.node_output(node)
      if isinstance(layer, keras.Model):
        for inner, outer in zip(layer.inputs, inputs):
          alias[id(inner)] = key(outer)
        walk(layer)
        alias[id(output)] = key(layer.outputs[0])
        continue
      rank = output.shape.rank
      out_channels = graph.channels(output) if rank else 1
      pair, macs = 0, 0
      if isinstance(layer, PrunableConcatConv):
        kind = liveness.PRUNABLE
        pair = liveness.pair_macs(layer.kernel_size,
                                  *layer.conv_output_shape[1:3])
      elif rank == 4 and graph.is_channel_concat(layer):
        kind = liveness.CONCAT
      elif rank == 4 and graph.passes_channels(layer, node):
        kind = liveness.PASSES
      elif (type(layer) is keras.layers.Conv2D and layer.groups == 1 and  # pylint: disable=unidiomatic-typecheck
            layer.data_format == "channels_last"):
        kind = liveness.CONV
        pair = liveness.pair_macs(layer.kernel_size, *output.shape[1:3])
      else:
        kind = liveness.READS_ALL
        macs = _layer_macs(layer)
      nodes.append(liveness.Node(
          kind, layer.name, [key(t) for t in inputs],
          [graph.channels(t) if t.shape.rank else 1 for t in inputs],
          key(output), out_channels, pair, macs))

  walk(model)
  return nodes, [key(t) for t in model.outputs]


def _layer_macs(layer):
  """MACs of a Conv2D or Dense as `dense_macs` counts them, else 0; None
  for a Conv2D whose output size is unknown."""
  if isinstance(layer, keras.layers.Conv2D):
    pair = liveness.pair_macs(layer.kernel_size, *layer.output_shape[1:3])
    if pair is None:
      return None
    return (pair * int(layer.input_shape[-1]) // layer.groups *
            layer.filters)
  if isinstance(layer, keras.layers.Dense):
    return int(layer.input_shape[-1]) * layer.units
  return 0


def compact_macs(model, live_masks=None):
  """MACs of the compact model `tfsdn.strip(model)` would build.

  The cascade included: filters that no consumer reads are not computed.

  Args:
    model: A functional tf_keras model with `PrunableConcatConv`s.
    live_masks: Dict from prunable layer name to the input channels it
      would read; layers not in it read their current live channels.

  Returns:
    The MACs per example, an int.
  """
  masks = {layer.name: layer.live_mask() for layer in prunable_layers(model)}
  masks.update(live_masks or {})
  nodes, outputs = channel_graph(model)
  return liveness.compact_macs(nodes, outputs, masks)
