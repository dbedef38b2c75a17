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

from tfsdn import graph
from tfsdn.compat import keras
from tfsdn.prunable_concat_conv import PrunableConcatConv


def runs(positions):
  """Maximal ranges of consecutive integers in a sorted vector.

  Args:
    positions: Sorted, distinct integers.

  Returns:
    A list of `(start, stop)` pairs, `stop` exclusive.
  """
  positions = np.asarray(positions, int)
  if not len(positions):
    return []
  breaks = np.flatnonzero(np.diff(positions) != 1) + 1
  starts = np.concatenate([[0], breaks])
  stops = np.concatenate([breaks, [len(positions)]])
  return [(int(positions[a]), int(positions[b - 1]) + 1)
          for a, b in zip(starts, stops)]


def count_runs(reads, order):
  """Contiguous ranges the consumers read when the channels are in `order`.

  Args:
    reads: Boolean matrix [consumers, channels]: `reads[i, c]` is True if
      consumer i reads channel c.
    order: A permutation of the channels: position p holds channel
      `order[p]`.

  Returns:
    The number of ranges (slices) summed over consumers, an int. A consumer
    that reads every channel or none counts 0: it needs no slice.
  """
  reads = np.asarray(reads, bool)[:, order]
  partial = ~(reads.all(axis=1) | ~reads.any(axis=1))
  padded = np.pad(reads[partial].astype(np.int8), ((0, 0), (1, 0)))
  return int((np.diff(padded, axis=1) == 1).sum())


def order_channels(reads):
  """A filter order under which each consumer reads few contiguous ranges.

  Channels that the same consumers read are kept together, and channels read
  by more consumers come first, so nested selections (a consumer reading a
  subset of what another reads) become prefixes. Several such orders are
  tried and the one with the fewest ranges (`count_runs`) wins; ties keep
  the original order as far as possible.

  Example:

  ```python
  reads = np.array([[1, 0, 1, 0], [1, 0, 1, 1]], bool)
  order = order_channels(reads)   # e.g. [0, 2, 3, 1]: two prefixes
  ```

  Args:
    reads: Boolean matrix [consumers, channels].

  Returns:
    A permutation of `range(channels)`, an int vector.

  Raises:
    ValueError: if `reads` is not a 2-D matrix.
  """
  reads = np.asarray(reads, bool)
  if reads.ndim != 2:
    raise ValueError(
        f"reads must be a [consumers, channels] matrix. Received shape: "
        f"{reads.shape}")
  channels = reads.shape[1]
  identity = np.arange(channels)
  if not reads.shape[0] or channels < 2:
    return identity
  candidates = [identity]
  counts = reads.sum(axis=0)
  # np.lexsort sorts by its last key first.
  for consumer_order in (np.arange(reads.shape[0]),
                         np.arange(reads.shape[0])[::-1],
                         np.argsort(-reads.sum(axis=1), kind="stable")):
    keys = [~reads[i] for i in consumer_order[::-1]]
    candidates.append(np.lexsort([identity] + keys + [-counts]))
    candidates.append(np.lexsort([identity] + keys))
  candidates.append(_chain_similar(reads, counts))
  costs = [count_runs(reads, order) for order in candidates]
  return candidates[int(np.argmin(costs))]


def _chain_similar(reads, counts):
  """Greedy path: from the most-read channel, always to the most similar."""
  columns = reads.T.astype(np.int32)
  left = list(np.argsort(-counts, kind="stable"))
  order = [left.pop(0)]
  while left:
    distance = np.abs(columns[left] - columns[order[-1]]).sum(axis=1)
    order.append(left.pop(int(np.argmin(distance))))
  return np.array(order)


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

  A tensor qualifies when it is not a model output and every consumer
  either follows any order (`takes_any_channel_order`) or passes channels
  through (concatenation, channel-wise layers, global pooling) to tensors
  that qualify.

  Args:
    model: A functional model without pruning wrappers.
    nodes: `graph.topological_nodes(model)`.

  Returns:
    A set of `id(keras_tensor)`.
  """
  consumers = collections.defaultdict(list)
  for node, layer in nodes:
    for tensor in graph.node_inputs(node):
      consumers[id(tensor)].append((node, layer))
  outputs = {id(t) for t in model.outputs}
  reorderable = set()
  for node, _ in reversed(nodes):
    output = graph.node_output(node)
    if id(output) in outputs or output.shape.rank not in (2, 4):
      continue
    if all(takes_any_channel_order(layer) or
           (passes_channel_order(layer, consumer) and
            id(graph.node_output(consumer)) in reorderable)
           for consumer, layer in consumers[id(output)]):
      reorderable.add(id(output))
  return reorderable


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
