"""Channel layout of the compact model: filter order and contiguous reads.

A compact layer reads a subset of the channels of each feature map it is
offered. Runtimes copy a contiguous range of channels cheaply (a slice) but
not an arbitrary subset (a gather on the channel axis is slow in plain
TensorFlow and XNNPACK, and tf2onnx wraps it in transposes). The order of a
producer's filters is free in the compact model (its consumers' kernels and
BatchNormalizations follow it), so the strip step orders them so that what
each consumer reads is few contiguous ranges, ideally one prefix, and reads
each range with a slice. The ordering itself is plain numpy; the graph
walks find which producers may be reordered and what their consumers read.
"""

import collections

import numpy as np

from tfsdn.common import channel_order
from tfsdn import graph
from tfsdn.common.channel_order import order_channels
from tfsdn.compat import keras
from tfsdn.prunable_concat_conv import PrunableConcatConv


def _global_pooling(layer):
  return (isinstance(layer, (keras.layers.GlobalAveragePooling2D,
                             keras.layers.GlobalMaxPooling2D)) and
          layer.data_format == "channels_last")


def takes_any_channel_order(layer):
  """True if the strip step can follow any order of `layer`'s input channels.

  Conv2D (ungrouped, channels-last) and Dense permute their kernel's input
  rows; a `PrunableConcatConv` becomes such a conv.
  """
  return (isinstance(layer, PrunableConcatConv) or
          isinstance(layer, keras.layers.Dense) or
          (type(layer) is keras.layers.Conv2D and layer.groups == 1 and  # pylint: disable=unidiomatic-typecheck
           layer.data_format == "channels_last"))


def passes_channel_order(layer, node):
  """True if channel c of the output is channel c of `layer`'s input(s)."""
  return (graph.is_channel_concat(layer) or graph.passes_channels(layer, node)
          or _global_pooling(layer))


def reorderable_tensors(model, nodes):
  """Tensors whose channels may be put in any order without changing outputs.

  `channel_order.reorderable` (the decision the Keras 3 path shares) on
  this graph: a tensor qualifies when it is not a model output and every
  consumer either follows any order (`takes_any_channel_order`) or passes
  channels through (concatenation, channel-wise layers, global pooling) to
  tensors that qualify.

  Args:
    model: A functional model without pruning wrappers.
    nodes: `graph.topological_nodes(model)`.

  Returns:
    A set of `id(keras_tensor)`.
  """

  def how(node, layer):
    if takes_any_channel_order(layer):
      return channel_order.ANY_ORDER, None
    if passes_channel_order(layer, node):
      return channel_order.PASSES_ORDER, id(graph.node_output(node))
    return channel_order.FIXED_ORDER, None

  readers = {key: [how(node, layer) for node, layer in found]
             for key, found in graph.consumers(nodes).items()}
  tensors = [id(graph.node_output(node)) for node, _ in nodes
             if graph.node_output(node).shape.rank in (2, 4)]
  return channel_order.reorderable(tensors, readers,
                                   [id(t) for t in model.outputs])


def filter_orders(model, nodes, needed):
  """The order of the computed filters of every producer worth reordering.

  Args:
    model: A functional model without pruning wrappers.
    nodes: `graph.topological_nodes(model)`.
    needed: `compact.channel_liveness(model)`.

  Returns:
    A dict from producer layer name to the original indices of the filters
    it keeps, in their new order. Producers that no `PrunableConcatConv`
    reads in part, or whose output channels cannot be reordered, are left
    out (they keep their order).
  """
  sources = graph.channel_sources(model)
  reads = collections.defaultdict(dict)  # producer -> consumer -> channels
  for node, layer in nodes:
    if not isinstance(layer, PrunableConcatConv):
      continue
    out_need = needed.get(id(graph.node_output(node)))
    if out_need is None or not out_need.any():
      continue
    offered = [s for t in graph.node_inputs(node) for s in sources[id(t)]]
    for index in layer.live_channels():
      producer, channel = offered[index]
      reads[producer].setdefault(layer.name, set()).add(channel)
  reorderable = reorderable_tensors(model, nodes)
  orders = {}
  for node, layer in nodes:
    output = graph.node_output(node)
    if (layer.name not in reads or id(output) not in reorderable or
        not (isinstance(layer, PrunableConcatConv) or
             takes_any_channel_order(layer) and
             isinstance(layer, keras.layers.Conv2D))):
      continue
    keep = np.flatnonzero(needed[id(output)])
    matrix = np.array([np.isin(keep, sorted(channels))
                       for channels in reads[layer.name].values()])
    order = order_channels(matrix)
    if not np.array_equal(order, np.arange(len(keep))):
      orders[layer.name] = keep[order]
  return orders
