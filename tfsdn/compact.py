"""`strip_to_compact`: rebuild a pruned DenseNet without its pruned channels."""

import numpy as np
import tensorflow as tf

from tfsdn import graph
from tfsdn.compat import keras
from tfsdn.compat import require_functional
from tfsdn.prunable_concat_conv import PrunableConcatConv

_ELEMENTWISE_EXCLUDED = ("softmax", "log_softmax")


def _passes_channels(layer, node):
  if isinstance(layer, keras.layers.Activation):
    activation = keras.activations.serialize(layer.activation)
    return activation not in _ELEMENTWISE_EXCLUDED
  return graph.is_channel_wise(layer) and len(graph.node_inputs(node)) == 1


def _is_filter_prunable_conv(layer):
  return (type(layer) is keras.layers.Conv2D and layer.groups == 1 and  # pylint: disable=unidiomatic-typecheck
          layer.data_format == "channels_last")


def channel_liveness(model):
  """Which channels of each tensor some live consumer reads.

  Walks the graph from the outputs back to the inputs, so that a feature map
  read by no consumer frees its producer and, transitively, whatever only
  that producer read.

  Args:
    model: A functional model without pruning wrappers.

  Returns:
    A dict from `id(keras_tensor)` to a boolean vector over its channels.
  """
  needed = {}

  def need(tensor, mask):
    current = needed.get(id(tensor))
    needed[id(tensor)] = mask.copy() if current is None else current | mask

  for output in model.outputs:
    need(output, np.ones(output.shape[-1] if output.shape.rank else 1, bool))
  for node, layer in reversed(graph.topological_nodes(model)):
    output = graph.node_output(node)
    out_need = needed.get(id(output))
    if out_need is None or not out_need.any():
      continue  # Nothing reads this layer: it is not built at all.
    inputs = graph.node_inputs(node)
    if isinstance(layer, PrunableConcatConv):
      kept = graph.kept_mask(layer)
      for tensor, part in zip(inputs, _split(kept, inputs)):
        need(tensor, part)
    elif graph.is_channel_concat(layer):
      for tensor, part in zip(inputs, _split(out_need, inputs)):
        need(tensor, part)
    elif output.shape.rank == 4 and _passes_channels(layer, node):
      need(inputs[0], out_need)
    else:
      for tensor in inputs:
        need(tensor, np.ones(graph.channels(tensor), bool))
  return needed


def _split(mask, tensors):
  bounds = np.cumsum([0] + [graph.channels(t) for t in tensors])
  return [mask[bounds[i]:bounds[i + 1]] for i in range(len(tensors))]


def strip_to_compact(model):
  """Returns a compact stock-Keras model without the pruned channels.

  Every `PrunableConcatConv` becomes [Concatenate ->] [channel gather ->]
  BatchNormalization -> ReLU -> Conv2D, reading only its kept input channels,
  with its BatchNormalization parameters and kernel sliced. A feature map that
  no consumer reads any more is not computed at all: its producer loses that
  filter and every consumer's channel indices are remapped, repeatedly, until
  nothing more can be removed. The result uses only tf_keras layers and TF
  ops, loads with `tf_keras.models.load_model` without custom objects and
  serves without tfsdn. In inference mode it computes the same function as
  the pruned model.

  Example:

  ```python
  compact = tfsdn.strip_to_compact(pruned_model)
  compact.save("compact.keras")
  ```

  Args:
    model: A model pruned by tfsdn, still wrapped by tfmot or already passed
      through `tfmot.sparsity.keras.strip_pruning`. Nested functional models
      are inlined (`graph.flatten`).

  Returns:
    A new, flat functional tf_keras model.

  Raises:
    TypeError: for Keras 3 objects and subclassed models.
    ValueError: if the model has no `PrunableConcatConv`.
  """
  require_functional(model)
  model = graph.flatten(graph.strip_wrappers(model))
  nodes = graph.topological_nodes(model)
  if not any(isinstance(layer, PrunableConcatConv) for _, layer in nodes):
    raise ValueError(
        f"Model {model.name!r} has no PrunableConcatConv layer, so there is "
        "nothing to strip. Build it with tfsdn.densenet or convert it with "
        "tfsdn.make_prunable, then prune it.")
  needed = channel_liveness(model)
  new = {}      # id(original tensor) -> new tensor
  present = {}  # id(original tensor) -> original channel indices it carries
  new_inputs = []
  for node, layer in nodes:
    output = graph.node_output(node)
    if node.is_input:
      tensor = graph.input_like(node, layer)
      new_inputs.append(tensor)
      new[id(output)] = tensor
      present[id(output)] = np.arange(output.shape[-1] or 0)
      continue
    out_need = needed.get(id(output))
    if out_need is None or not out_need.any():
      continue
    inputs = graph.node_inputs(node)
    if isinstance(layer, PrunableConcatConv):
      new[id(output)] = _compact_concat_conv(
          layer, [new.get(id(t)) for t in inputs],
          [present.get(id(t)) for t in inputs],
          np.flatnonzero(out_need))
      present[id(output)] = np.flatnonzero(out_need)
    elif _is_filter_prunable_conv(layer) and not out_need.all():
      _require_full(inputs, present, layer)
      keep = np.flatnonzero(out_need)
      config = layer.get_config()
      config["filters"] = len(keep)
      conv = type(layer).from_config(config)
      new[id(output)] = graph.call_like(node, conv, new)
      weights = layer.get_weights()
      conv.set_weights([weights[0][..., keep]] + [w[keep] for w in weights[1:]])
      present[id(output)] = keep
    elif graph.is_channel_concat(layer) and output.shape.rank == 4:
      # Inputs that no one reads any more were not built: concatenate the
      # rest, and remember which original channels the result carries.
      offsets = np.cumsum([0] + [graph.channels(t) for t in inputs])
      built = [i for i, t in enumerate(inputs) if id(t) in new]
      parts = [new[id(inputs[i])] for i in built]
      new[id(output)] = parts[0] if len(parts) == 1 else graph.copy_layer(
          layer)(parts)
      present[id(output)] = np.concatenate(
          [present[id(inputs[i])] + offsets[i] for i in built])
    elif output.shape.rank == 4 and _passes_channels(layer, node):
      kept_in = present[id(inputs[0])]
      copy = graph.copy_layer(layer)
      new[id(output)] = graph.call_like(node, copy, new)
      copy.set_weights([w[kept_in] for w in layer.get_weights()])
      present[id(output)] = kept_in
    else:
      _require_full(inputs, present, layer)
      copy = graph.copy_layer(layer)
      new[id(output)] = graph.call_like(node, copy, new)
      copy.set_weights(layer.get_weights())
      present[id(output)] = np.arange(
          output.shape[-1] if output.shape.rank else 1)
  return graph.model_like(model, new_inputs, new)


def _require_full(inputs, present, layer):
  for tensor in inputs:
    if len(present[id(tensor)]) != graph.channels(tensor):
      raise AssertionError(
          f"{layer.name} needs all channels of its input but only "
          f"{len(present[id(tensor)])} of {graph.channels(tensor)} remain")


def select_channels(x, indices):
  """Selects `indices` along the channel axis of an NHWC tensor (a tf op)."""
  return tf.gather(x, [int(i) for i in indices], axis=-1)


def _compact_concat_conv(layer, inputs, present_inputs, keep_filters):
  """Stock layers computing `layer` on its kept inputs and kept filters."""
  kept = np.flatnonzero(graph.kept_mask(layer))
  if not len(kept):
    raise ValueError(f"{layer.name} has no live input channel left.")
  offsets = np.cumsum([0] + list(layer.input_channel_counts))
  positions, start, live_inputs = [], 0, []
  for j, carried in enumerate(present_inputs):
    local = kept[(kept >= offsets[j]) & (kept < offsets[j + 1])] - offsets[j]
    if carried is None:  # An input nobody reads any more is not computed.
      if len(local):
        raise AssertionError(f"{layer.name} reads a removed feature map")
      continue
    live_inputs.append(inputs[j])
    where = np.searchsorted(carried, local)
    if len(local) and (where.max() >= len(carried) or
                       (carried[where] != local).any()):
      raise AssertionError(f"{layer.name} reads a channel that was removed")
    positions.append(where + start)
    start += len(carried)
  positions = np.concatenate(positions)
  dtype = layer.dtype_policy.name
  x = live_inputs[0] if len(live_inputs) == 1 else keras.layers.Concatenate(
      name=f"{layer.name}_concat", dtype=dtype)(live_inputs)
  if not np.array_equal(positions, np.arange(start)):
    x = select_channels(x, positions)
  batch_norm = keras.layers.BatchNormalization(
      momentum=layer.bn_momentum, epsilon=layer.bn_epsilon,
      name=f"{layer.name}_bn", dtype=dtype)
  x = batch_norm(x)
  batch_norm.set_weights([w[kept] for w in layer.batch_norm.get_weights()])
  x = keras.layers.ReLU(name=f"{layer.name}_relu", dtype=dtype)(x)
  conv = keras.layers.Conv2D(
      len(keep_filters), layer.kernel_size, strides=layer.strides,
      padding=layer.padding, use_bias=False, name=layer.name, dtype=dtype)
  x = conv(x)
  kernel = layer.conv.get_weights()[0]
  conv.set_weights([kernel[:, :, kept, :][..., keep_filters]])
  return x
