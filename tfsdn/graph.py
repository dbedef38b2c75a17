"""Walking a functional tf_keras model: nodes, tensors and channel origins.

Used by the strip step and by the report. Only single-output layers with one
call in the model are supported, which covers DenseNets built by tfsdn and by
`tf_keras.applications`.
"""

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper
from tf_keras.src.engine.keras_tensor import KerasTensor
from tf_keras.src.layers.core.tf_op_layer import TFOpLambda

from tfsdn import criteria
from tfsdn.compat import keras
from tfsdn.prunable_concat_conv import PrunableConcatConv

# Layers that map channel c of their input to channel c of their output and
# work on any subset of channels (BatchNormalization after slicing its
# parameters).
CHANNEL_WISE = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.AveragePooling2D,
    keras.layers.MaxPooling2D,
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.ZeroPadding2D,
    keras.layers.BatchNormalization,
)

GATHER_SYMBOLS = ("gather", "compat.v1.gather")


def unwrap(layer):
  """The layer inside a tfmot pruning wrapper, or the layer itself."""
  if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
    return layer.layer
  return layer


def _has_wrappers(model):
  return any(isinstance(layer, pruning_wrapper.PruneLowMagnitude) or (
      isinstance(layer, keras.Model) and _has_wrappers(layer))
             for layer in model.layers)


def strip_wrappers(model):
  """`tfmot.sparsity.keras.strip_pruning(model)` if it has wrappers, else `model`.

  Wrappers inside nested models count too.
  """
  if _has_wrappers(model):
    return tfmot.sparsity.keras.strip_pruning(model)
  return model


def flatten(model):
  """A copy of `model` with every nested functional model inlined.

  `Sequential([base, head])` or `keras.Model(x, base(x))` become one flat
  functional model whose layers are copies (config and weights) of all
  layers, nested ones included, with their names. A model without nested
  models is returned as it is.

  Args:
    model: A functional or Sequential tf_keras model without tfmot wrappers.

  Returns:
    A functional tf_keras model.

  Raises:
    TypeError: if a nested model is subclassed.
    ValueError: if a nested model has several outputs, is called more than
      once, or two layers would share a name.
  """
  if not any(isinstance(l, keras.Model) for l in model.layers):
    return model
  new, new_inputs, names = {}, [], set()

  def inline(current, top):
    for node, layer in topological_nodes(current):
      output = node_output(node)
      if node.is_input:
        if top:
          tensor = input_like(node, layer)
          new_inputs.append(tensor)
          new[id(output)] = tensor
        continue
      if isinstance(layer, keras.Model):
        if not getattr(layer, "_is_graph_network", False):
          raise TypeError(
              f"Nested model {layer.name!r} in {model.name!r} is subclassed; "
              "only functional and Sequential models can be inlined.")
        if len(layer.outputs) != 1:
          raise ValueError(
              f"Nested model {layer.name!r} in {model.name!r} has "
              f"{len(layer.outputs)} outputs; only one is supported.")
        for inner, outer in zip(layer.inputs, node_inputs(node)):
          new[id(inner)] = new[id(outer)]
        inline(layer, top=False)
        new[id(output)] = new[id(layer.outputs[0])]
        continue
      if layer.name in names:
        raise ValueError(
            f"Cannot inline the nested models of {model.name!r}: two layers "
            f"are named {layer.name!r}. Give nested layers unique names.")
      names.add(layer.name)
      copy = copy_layer(layer)
      new[id(output)] = call_like(node, copy, new)
      copy.set_weights(layer.get_weights())

  inline(model, top=True)
  return model_like(model, new_inputs, new)


def is_channel_wise(layer):
  if isinstance(layer, keras.layers.BatchNormalization):
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    return axis in (-1, 3)
  return isinstance(layer, CHANNEL_WISE)


def is_channel_concat(layer):
  return isinstance(layer, keras.layers.Concatenate) and layer.axis in (-1, 3)


def is_channel_gather(layer, node):
  """True for a `tf.gather(x, indices, axis=-1)` op layer."""
  if not isinstance(layer, TFOpLambda) or layer.symbol not in GATHER_SYMBOLS:
    return False
  return node.call_kwargs.get("axis") in (-1, 3)


def gather_indices(node):
  args = node.call_args
  return list(args[1]) if len(args) > 1 else list(node.call_kwargs["indices"])


def topological_nodes(model):
  """The model's own nodes, inputs first, each with its (unwrapped) layer.

  Returns:
    A list of `(node, layer)` pairs; consumers come after their producers.

  Raises:
    ValueError: for layers called more than once or with several outputs.
  """
  pairs = []
  seen = set()
  for depth in sorted(model._nodes_by_depth.keys(), reverse=True):  # pylint: disable=protected-access
    for node in model._nodes_by_depth[depth]:  # pylint: disable=protected-access
      layer = node.layer
      if id(layer) in seen:
        raise ValueError(
            f"Layer {layer.name!r} is called more than once in model "
            f"{model.name!r}; shared layers are not supported.")
      seen.add(id(layer))
      if len(tf.nest.flatten(node.outputs)) != 1:
        raise ValueError(
            f"Layer {layer.name!r} has several outputs; not supported.")
      pairs.append((node, layer))
  return pairs


def node_inputs(node):
  """The KerasTensors a node reads, flattened, in call order."""
  if node.is_input:
    return []
  return [t for t in tf.nest.flatten((node.call_args, node.call_kwargs))
          if isinstance(t, KerasTensor)]


def node_output(node):
  return tf.nest.flatten(node.outputs)[0]


def copy_layer(layer):
  """A new, unbuilt layer with `layer`'s config (weights are not copied)."""
  return type(layer).from_config(layer.get_config())


def call_like(node, layer, new):
  """Calls `layer` as `node` called its layer, on the new tensors.

  Args:
    node: A node of the original model.
    layer: The layer to call.
    new: A dict from `id(original KerasTensor)` to the tensor replacing it.

  Returns:
    The output of the call.
  """
  def remap(value):
    return new[id(value)] if isinstance(value, KerasTensor) else value
  args = tf.nest.map_structure(remap, node.call_args)
  kwargs = tf.nest.map_structure(remap, node.call_kwargs)
  return layer(*args, **kwargs)


def input_like(node, layer):
  """A new `keras.Input` with the shape, dtype and name of an input node."""
  output = node_output(node)
  return keras.Input(shape=output.shape[1:], dtype=output.dtype,
                     name=layer.name)


def model_like(model, new_inputs, new):
  """A functional model on `new_inputs` whose outputs replace `model`'s."""
  outputs = [new[id(t)] for t in model.outputs]
  return keras.Model(new_inputs if len(new_inputs) > 1 else new_inputs[0],
                     outputs if len(outputs) > 1 else outputs[0],
                     name=model.name)


def channels(tensor):
  return int(tensor.shape[-1])


def channel_sources(model):
  """Where every channel of every tensor in the model was computed.

  A conv, dense, prunable or any other layer starts new channels; concat,
  gather and channel-wise layers (BN, ReLU, pooling, dropout) pass them on.

  Args:
    model: A functional tf_keras model.

  Returns:
    A dict from `id(keras_tensor)` to a list, one `(layer_name, channel)` pair
    per channel of that tensor.
  """
  sources = {}
  for node, layer in topological_nodes(model):
    output = node_output(node)
    inputs = node_inputs(node)
    if output.shape.rank != 4:
      sources[id(output)] = [(layer.name, c) for c in range(
          channels(output) if output.shape.rank else 0)]
      continue
    if inputs and is_channel_concat(layer):
      sources[id(output)] = [s for t in inputs for s in sources[id(t)]]
    elif inputs and is_channel_gather(layer, node):
      source = sources[id(inputs[0])]
      sources[id(output)] = [source[i] for i in gather_indices(node)]
    elif len(inputs) == 1 and is_channel_wise(layer):
      sources[id(output)] = sources[id(inputs[0])]
    else:
      sources[id(output)] = [(layer.name, c) for c in range(channels(output))]
  return sources


def kept_mask(layer):
  """Boolean vector of a PrunableConcatConv's live input channels.

  Raises:
    ValueError: if a score is negative or not finite (set by hand: training
      never writes one), since such a score means neither live nor pruned.
  """
  scores = layer.contribution_scores()
  bad = np.flatnonzero(~np.isfinite(scores) | (scores < 0))
  if len(bad):
    raise ValueError(
        f"Layer {layer.name!r} has invalid contribution scores at input "
        f"channels {bad[:8].tolist()}: {scores[bad[:8]].tolist()}. Scores "
        "must be finite and >= 0 (0 marks a pruned channel).")
  return criteria.is_live(scores)
