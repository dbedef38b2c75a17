"""Walking and rebuilding functional Keras 3 models: nodes, inlining, sources.

The Keras 3 counterpart of `tfsdn.graph`, for `tfsdn.keras3.strip` and its
report: the same definitions of which layers pass channels through, the
same inlining of nested models and the same channel sources, so both paths
record the same. Generic: nothing here knows about pruning. The private
Keras 3 API this needs (`Model._nodes_by_depth`, `Sequential._functional`)
is reached here only.
"""

import inspect

import keras

from tfsdn.keras3.checks import require_keras3_model

# Layers that map channel c of their only input to channel c of their
# output and work on any subset of channels (BatchNormalization after its
# parameters are sliced), as `tfsdn.graph.CHANNEL_WISE`.
CHANNEL_WISE = (keras.layers.BatchNormalization, keras.layers.ReLU,
                keras.layers.Activation, keras.layers.Dropout,
                keras.layers.SpatialDropout2D, keras.layers.AveragePooling2D,
                keras.layers.MaxPooling2D, keras.layers.ZeroPadding2D)

GLOBAL_POOLING = (keras.layers.GlobalAveragePooling2D,
                  keras.layers.GlobalMaxPooling2D)

_CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")


def functional(model, argument="model"):
  """The functional graph of a functional or Sequential Keras 3 model.

  Raises:
    TypeError: for a subclassed or tf_keras model, or a Sequential model
      not built on an input shape.
  """
  if isinstance(model, keras.Sequential):
    graph = getattr(model, "_functional", None)
    if graph is None:
      raise TypeError(
          f"Sequential model {model.name!r} has no input shape yet; build "
          "it with keras.Input(shape) as its first layer. Received: "
          f"{argument}={model.name!r}")
    return graph
  return require_keras3_model(model, argument)


def nodes(model):
  """The nodes of a functional model, producers before consumers."""
  by_depth = model._nodes_by_depth  # pylint: disable=protected-access
  return [node for depth in sorted(by_depth, reverse=True)
          for node in by_depth[depth]]


def channels(tensor):
  return int(tensor.shape[-1])


def is_channel_concat(layer):
  return isinstance(layer, keras.layers.Concatenate) and layer.axis in (-1, 3)


def passes_channels(layer, node):
  """True if `layer`, as called at `node`, maps channel c to channel c of
  a 4-D tensor: `tfsdn.graph.passes_channels` on Keras 3 (BatchNormalization
  on the channel axis, an Activation that does not mix channels)."""
  if len(node.input_tensors) != 1 or len(node.output_tensors[0].shape) != 4:
    return False
  if isinstance(layer, keras.layers.BatchNormalization):
    return layer.axis in (-1, 3)
  if isinstance(layer, keras.layers.Activation):
    return (keras.activations.serialize(layer.activation)
            not in _CHANNEL_MIXING_ACTIVATIONS)
  return isinstance(layer, CHANNEL_WISE)


def passes_channel_order(layer, node):
  """True if channel c of the output is channel c of `layer`'s input(s):
  a channel concatenation, a channel-wise layer or a global pooling."""
  return (is_channel_concat(layer) or passes_channels(layer, node) or
          (isinstance(layer, GLOBAL_POOLING) and
           layer.data_format == "channels_last"))


def flatten(model):
  """A functional model computing `model` with nested models inlined.

  `Sequential([backbone, head])` or `keras.Model(x, head(backbone(x)))`
  become one flat functional model whose layers are copies (config and
  weights) of all layers, nested ones included, with their names, as
  `tfsdn.graph.flatten` does for tf_keras. A nested model called with
  `training=False` passes it to every layer inlined from it. A functional
  model without nested models is returned as it is; a Sequential one as
  its functional graph.

  Args:
    model: A functional or Sequential Keras 3 model.

  Returns:
    A functional Keras 3 model named as `model`.

  Raises:
    TypeError: if `model` or a nested model is subclassed.
    ValueError: if a nested model has several outputs, or two layers would
      share a name.
  """
  graph = functional(model)
  if not any(isinstance(layer, keras.Model) for layer in graph.layers):
    return graph
  new, new_inputs, names = {}, [], set()

  def inline(current, top, training=None):
    for node in nodes(current):
      layer = node.operation
      output = node.output_tensors[0]
      if node.is_input:
        if top:
          fresh = keras.Input(shape=output.shape[1:], dtype=output.dtype,
                              name=layer.name)
          new_inputs.append(fresh)
          new[id(output)] = fresh
        continue
      if isinstance(layer, keras.Model):
        inner = functional(layer, argument=f"nested model {layer.name!r}")
        if len(inner.outputs) != 1:
          raise ValueError(
              f"Nested model {layer.name!r} in {model.name!r} has "
              f"{len(inner.outputs)} outputs; only one is supported.")
        for inner_input, outer in zip(inner.inputs, node.input_tensors):
          new[id(inner_input)] = new[id(outer)]
        outer = node.arguments.kwargs.get("training")
        inline(inner, top=False,
               training=training if outer is None else outer)
        new[id(output)] = new[id(inner.outputs[0])]
        continue
      if layer.name in names:
        raise ValueError(
            f"Cannot inline the nested models of {model.name!r}: two layers "
            f"are named {layer.name!r}. Give nested layers unique names.")
      names.add(layer.name)
      copy = type(layer).from_config(layer.get_config())
      args, kwargs = node.arguments.fill_in(new)
      if training is not None and (
          "training" in inspect.signature(copy.call).parameters):
        kwargs = {**kwargs, "training": training}
      new[id(output)] = copy(*args, **kwargs)
      copy.set_weights(layer.get_weights())

  inline(graph, top=True)
  outputs = [new[id(t)] for t in graph.outputs]
  return keras.Model(new_inputs if len(new_inputs) > 1 else new_inputs[0],
                     outputs if len(outputs) > 1 else outputs[0],
                     name=model.name)


def channel_sources(model):
  """Where every channel of every tensor of a functional model was computed.

  `tfsdn.graph.channel_sources` on Keras 3: a concatenation and a
  channel-wise layer pass their inputs' sources on; any other layer (and
  any output that is not 4-D) starts new channels.

  Returns:
    A dict from `id(keras_tensor)` to a list, one `(layer name, channel)`
    pair per channel of that tensor.
  """
  sources = {}
  for node in nodes(model):
    layer, output, inputs = node.operation, node.output_tensors[0], (
        node.input_tensors)
    if len(output.shape) == 4 and inputs and is_channel_concat(layer):
      sources[id(output)] = [s for t in inputs for s in sources[id(t)]]
    elif len(output.shape) == 4 and inputs and passes_channels(layer, node):
      sources[id(output)] = sources[id(inputs[0])]
    else:
      sources[id(output)] = [(layer.name, c) for c in range(
          channels(output) if len(output.shape) else 0)]
  return sources
