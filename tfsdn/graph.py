"""Walking and rebuilding functional tf_keras models: nodes and channels.

Generic: nothing here knows about pruning. Used by the converter, the strip
step and the report. Only single-output layers with one call in the model
are supported, which covers DenseNets built by tfsdn and by
`tf_keras.applications`. The private tf_keras API this needs is reached
through `tfsdn.internals` only.
"""

import inspect

import tensorflow as tf

from tfsdn import internals
from tfsdn.compat import keras

# Layers that map channel c of their only input to channel c of their
# output and work on any subset of channels (BatchNormalization after its
# parameters are sliced). Activation counts unless it mixes channels.
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

_CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")

GATHER_SYMBOLS = ("gather", "compat.v1.gather")


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

  def inline(current, top, training=None):
    for node, layer in topological_nodes(current):
      output = node_output(node)
      if is_input(node):
        if top:
          tensor = input_like(node, layer)
          new_inputs.append(tensor)
          new[id(output)] = tensor
        continue
      if isinstance(layer, keras.Model):
        if not internals.is_graph_network(layer):
          raise TypeError(
              f"Nested model {layer.name!r} in {model.name!r} is subclassed; "
              "only functional and Sequential models can be inlined.")
        if len(layer.outputs) != 1:
          raise ValueError(
              f"Nested model {layer.name!r} in {model.name!r} has "
              f"{len(layer.outputs)} outputs; only one is supported.")
        for inner, outer in zip(layer.inputs, node_inputs(node)):
          new[id(inner)] = new[id(outer)]
        # `base(x, training=False)` (frozen BatchNormalization when
        # fine-tuning) must stay so for every layer inlined from `base`.
        outer = training_argument(node)
        inline(layer, top=False, training=training if outer is None else outer)
        new[id(output)] = new[id(layer.outputs[0])]
        continue
      if layer.name in names:
        raise ValueError(
            f"Cannot inline the nested models of {model.name!r}: two layers "
            f"are named {layer.name!r}. Give nested layers unique names.")
      names.add(layer.name)
      copy = copy_layer(layer)
      new[id(output)] = call_like(node, copy, new, training=training)
      copy.set_weights(layer.get_weights())

  inline(model, top=True)
  return model_like(model, new_inputs, new)


def passes_channels(layer, node):
  """True if `layer`, as called at `node`, maps channel c to channel c.

  The one definition used by the strip step, the report and channel
  tracking: a single-input, 4-D layer of `CHANNEL_WISE` type, with
  BatchNormalization on the channel axis and an Activation that does not mix
  channels (not softmax).
  """
  if len(node_inputs(node)) != 1 or node_output(node).shape.rank != 4:
    return False
  if isinstance(layer, keras.layers.BatchNormalization):
    axis = layer.axis if isinstance(layer.axis, int) else (
        layer.axis[0] if len(layer.axis) == 1 else None)
    return axis in (-1, 3)
  if isinstance(layer, keras.layers.Activation):
    return (keras.activations.serialize(layer.activation)
            not in _CHANNEL_MIXING_ACTIVATIONS)
  return isinstance(layer, CHANNEL_WISE)


def is_channel_concat(layer):
  return isinstance(layer, keras.layers.Concatenate) and layer.axis in (-1, 3)


def is_channel_gather(layer, node):
  """True for a `tf.gather(x, indices, axis=-1)` op layer."""
  if internals.tf_op_symbol(layer) not in GATHER_SYMBOLS:
    return False
  return internals.call_arguments(node)[1].get("axis") in (-1, 3)


def gather_indices(node):
  args, kwargs = internals.call_arguments(node)
  return list(args[1]) if len(args) > 1 else list(kwargs["indices"])


def topological_nodes(model):
  """The model's own nodes, inputs first, each with its (unwrapped) layer.

  Returns:
    A list of `(node, layer)` pairs; consumers come after their producers.

  Raises:
    ValueError: for layers called more than once or with several outputs.
  """
  pairs = []
  seen = set()
  by_depth = internals.nodes_by_depth(model)
  for depth in sorted(by_depth.keys(), reverse=True):
    for node in by_depth[depth]:
      layer = internals.node_layer(node)
      if id(layer) in seen:
        raise ValueError(
            f"Layer {layer.name!r} is called more than once in model "
            f"{model.name!r}; shared layers are not supported.")
      seen.add(id(layer))
      if len(internals.node_outputs(node)) != 1:
        raise ValueError(
            f"Layer {layer.name!r} has several outputs; not supported.")
      pairs.append((node, layer))
  return pairs


def node_inputs(node):
  """The KerasTensors a node reads, flattened, in call order."""
  if is_input(node):
    return []
  return [t for t in tf.nest.flatten(internals.call_arguments(node))
          if internals.is_keras_tensor(t)]


def node_output(node):
  return internals.node_outputs(node)[0]


def consumers(nodes):
  """`{id(tensor): [(node, layer), ...]}`: who reads each tensor.

  Args:
    nodes: `topological_nodes(model)`.
  """
  found = {}
  for node, layer in nodes:
    for tensor in node_inputs(node):
      found.setdefault(id(tensor), []).append((node, layer))
  return found


def is_input(node):
  """True for the node of an `Input` layer."""
  return internals.node_is_input(node)


def copy_layer(layer, **config):
  """A new, unbuilt layer with `layer`'s config (weights are not copied).

  Args:
    layer: The layer to copy.
    **config: Config entries to set in the copy's config.
  """
  return type(layer).from_config(dict(layer.get_config(), **config))


def call_like(node, layer, new, training=None):
  """Calls `layer` as `node` called its layer, on the new tensors.

  Args:
    node: A node of the original model.
    layer: The layer to call.
    new: A dict from `id(original KerasTensor)` to the tensor replacing it.
    training: If not None, passed as `training=` to a layer that takes it
      (overriding the node's own value).

  Returns:
    The output of the call.
  """
  def remap(value):
    return new[id(value)] if internals.is_keras_tensor(value) else value
  args, kwargs = tf.nest.map_structure(remap, internals.call_arguments(node))
  if training is not None and takes_training(layer):
    kwargs = {**kwargs, "training": training}
  return layer(*args, **kwargs)


def takes_training(layer):
  """True if `layer.call` has a `training` argument."""
  return "training" in inspect.signature(layer.call).parameters


def training_argument(node):
  """The explicit `training=` of a node's call (True, False), else None."""
  return internals.call_arguments(node)[1].get("training")


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
    elif passes_channels(layer, node):
      sources[id(output)] = sources[id(inputs[0])]
    else:
      sources[id(output)] = [(layer.name, c) for c in range(channels(output))]
  return sources
