"""What the strip step keeps, and what the compact model costs (no TensorFlow).

A pruned input channel frees more than itself: once no consumer reads a
feature map's channel, the strip step does not compute it at all (its
producer loses that filter), and a producer that loses every filter frees
its own inputs in turn. `compact_macs` follows that cascade on a small
description of the model's graph, so that a planner can count what the
compact model will really cost before anything is pruned
(`tfsdn.GlobalAllocation` under a MAC budget). Both paths describe their
graphs with `Node`s: `tfsdn.costs.channel_graph` (tf_keras) and
`tfsdn.keras3.pruning` (Keras 3).
"""

import dataclasses
from typing import Optional

import numpy as np

PRUNABLE = "prunable"   # A PrunableConcatConv: reads its live inputs only.
CONV = "conv"           # A Conv2D: reads every input, computes needed filters.
# (Other layers that read every input, a Dense or a grouped conv, are
# READS_ALL with fixed `macs`.)
CONCAT = "concat"       # A channel concatenation: channel i of input j.
PASSES = "passes"       # Channel c in, channel c out (BN, ReLU, pooling...).
READS_ALL = "reads_all"  # Reads every input channel (Dense, Flatten, ...).


@dataclasses.dataclass
class Node:
  """One layer call of a model, as far as channels go.

  Attributes:
    kind: One of `PRUNABLE`, `CONV`, `CONCAT`, `PASSES`, `READS_ALL`.
    name: The layer's name (a prunable layer's is the key of its mask).
    inputs: Keys of the tensors it reads, in order.
    input_channels: Channels of each of them.
    output: Key of the tensor it writes.
    output_channels: Channels of that tensor (1 for a rank-less output).
    macs_per_channel_pair: For `PRUNABLE` and `CONV`, the MACs of one input
      channel times one filter (`kh * kw * out_h * out_w`, `pair_macs`);
      None where the image size is unknown.
    macs: For other kinds, the MACs the layer costs if it is built at all;
      None where they depend on an unknown image size.
  """
  kind: str
  name: str
  inputs: list
  input_channels: list
  output: object
  output_channels: int
  macs_per_channel_pair: Optional[int] = 0
  macs: Optional[int] = 0


def pair_macs(kernel_size, height, width):
  """MACs of one input channel times one filter of a conv, or None.

  Args:
    kernel_size: `(kh, kw)`.
    height: The conv's output height, None if unknown.
    width: Its output width, None if unknown.

  Returns:
    `kh * kw * height * width`, or None for an unknown height or width (a
    model built for variable image sizes): its channel structure is known,
    its MACs are not.
  """
  if height is None or width is None:
    return None
  kh, kw = kernel_size
  return int(kh) * int(kw) * int(height) * int(width)


def needed_channels(nodes, outputs, live_masks):
  """Which channels of each tensor some surviving consumer reads.

  Args:
    nodes: `Node`s in topological order.
    outputs: Keys of the model's output tensors (every channel needed).
    live_masks: Dict from a prunable layer's name to the boolean vector of
      the input channels it reads.

  Returns:
    A dict from tensor key to a boolean vector over its channels; a tensor
    that nothing reads is absent.
  """
  output_channels = {node.output: node.output_channels for node in nodes}
  needed = {}

  def need(key, mask):
    current = needed.get(key)
    needed[key] = mask.copy() if current is None else current | mask

  for key in outputs:
    need(key, np.ones(output_channels.get(key, 1), bool))
  for node in reversed(nodes):
    out_need = needed.get(node.output)
    if out_need is None or not out_need.any():
      continue  # Nothing reads it: strip does not build it.
    bounds = np.cumsum([0] + list(node.input_channels))
    if node.kind == PRUNABLE:
      parts = np.asarray(live_masks[node.name], bool)
    elif node.kind == CONCAT:
      parts = out_need
    elif node.kind == PASSES:
      parts = np.tile(out_need, len(node.inputs))
    else:
      parts = np.ones(bounds[-1], bool)
    for i, key in enumerate(node.inputs):
      need(key, parts[bounds[i]:bounds[i + 1]])
  return needed


def compact_macs(nodes, outputs, live_masks, fixed_macs=0):
  """MACs per example of the model the strip step would build.

  Counts what `model_report` counts for a compact model stripped with exact
  reads (`slice_cost_macs=0`): each surviving prunable layer's live inputs
  times the filters someone reads, each Conv2D's inputs times its needed
  filters, and the fixed `macs` of every other surviving layer.

  Args:
    nodes: `Node`s in topological order.
    outputs: Keys of the model's outputs.
    live_masks: Dict from prunable layer name to its live input channels.
    fixed_macs: MACs of layers not described by `nodes`, added as they are.

  Returns:
    The MACs, an int.

  Raises:
    ValueError: if a surviving layer's MACs depend on an unknown image size
      (a cost of None), naming the layer.
  """
  needed = needed_channels(nodes, outputs, live_masks)
  total = int(fixed_macs)
  for node in nodes:
    out_need = needed.get(node.output)
    if out_need is None or not out_need.any():
      continue
    if node.macs_per_channel_pair is None or node.macs is None:
      raise ValueError(
          f"Layer {node.name!r} has an unknown output size, so its MACs "
          "depend on the image size: count them on a model built for a "
          "fixed input size (e.g. tfsdn.export.with_image_size, or "
          "model_report(model, input_size=...)).")
    filters = int(out_need.sum())
    if node.kind == PRUNABLE:
      reads = int(np.sum(live_masks[node.name]))
    elif node.kind == CONV:
      reads = int(sum(node.input_channels))
    else:
      total += node.macs
      continue
    total += node.macs_per_channel_pair * reads * filters
  return total


def producers_of_channels(nodes, layer_name):
  """`(producer name, channel)` of each input channel of a prunable layer.

  Channels are traced back through concatenations and channel-preserving
  layers to the layer that computed them (a model input counts as a
  producer under its key).

  Args:
    nodes: `Node`s in topological order.
    layer_name: A prunable layer's name.

  Returns:
    A list with one `(producer name, channel)` per input channel.
  """
  by_output = {node.output: node for node in nodes}
  node = next(n for n in nodes if n.name == layer_name)

  def trace(key, channel):
    while key in by_output:
      producer = by_output[key]
      if producer.kind == CONCAT:
        bounds = np.cumsum([0] + list(producer.input_channels))
        i = int(np.searchsorted(bounds, channel, side="right")) - 1
        key, channel = producer.inputs[i], channel - int(bounds[i])
      elif producer.kind == PASSES and len(producer.inputs) == 1:
        key = producer.inputs[0]
      else:
        return producer.name, channel
    return str(key), channel

  sources = []
  for key, channels in zip(node.inputs, node.input_channels):
    sources.extend(trace(key, c) for c in range(channels))
  return sources
