"""Moving a tfsdn model between tf_keras (the tfmot path) and Keras 3.

`from_tf_keras` rebuilds a tf_keras functional model (tfmot wrappers are
removed first) layer by layer in Keras 3, with its weights, scores and
statistics; `to_tf_keras` goes back. The two models compute the same
outputs (tests: 1e-5), so a model trained with tfmot can be stripped and
exported on Keras 3 and the other way round. Stock layers move through
their configs, `PrunableConcatConv` through its own (the Keras 3 layer has
no `bn_synchronized`).
"""

import inspect

import keras
import numpy as np

from tfsdn.keras3.checks import require_keras3_model
from tfsdn.keras3.layer import PrunableConcatConv

# Weights of a PrunableConcatConv, by attribute path, in both Kerases.
_CONCAT_CONV_WEIGHTS = (
    "batch_norm.gamma", "batch_norm.beta", "batch_norm.moving_mean",
    "batch_norm.moving_variance", "conv.kernel", "contribution_score",
    "input_abs_mean", "measuring")


def _attribute(obj, path):
  for name in path.split("."):
    obj = getattr(obj, name)
  return obj


def _plain(config):
  """A config without Keras 3's `module`/`registered_name` wrappers and with
  dtype policies as plain names, which both Kerases read."""
  if isinstance(config, dict):
    if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
      return config["config"]["name"]
    # input_axes/output_axes: tf_keras initializer options Keras 3 lacks.
    return {k: _plain(v) for k, v in config.items()
            if k not in ("module", "registered_name", "build_config",
                         "compile_config", "input_axes", "output_axes")}
  if isinstance(config, list):
    return [_plain(v) for v in config]
  return config


def _walk(model, keras_module, convert, nodes_of, node_parts):
  """Rebuilds `model` in `keras_module`, one layer at a time."""
  new = {}
  inputs = []
  for tensor in model.inputs:
    fresh = keras_module.Input(shape=tuple(tensor.shape[1:]),
                               name=tensor.name.split(":")[0])
    new[id(tensor)] = fresh
    inputs.append(fresh)
  depths = sorted(nodes_of(model), reverse=True)
  for depth in depths:
    for node in nodes_of(model)[depth]:
      layer, node_inputs, outputs, takes_list = node_parts(node)
      if not node_inputs:
        continue  # an input layer
      target = convert(layer)
      args = [new[id(t)] for t in node_inputs]
      result = target(args if takes_list else args[0])
      _copy_weights(layer, target)
      results = result if isinstance(result, (list, tuple)) else [result]
      for old, fresh in zip(outputs, results):
        new[id(old)] = fresh
  outputs = [new[id(t)] for t in model.outputs]
  return keras_module.Model(inputs[0] if len(inputs) == 1 else inputs,
                            outputs[0] if len(outputs) == 1 else outputs,
                            name=model.name)


def _is_concat_conv(layer):
  return type(layer).__name__ == "PrunableConcatConv"


def _stock_class(layers_module, layer):
  """The class of the same name among `layers_module`'s stock layers."""
  name = type(layer).__name__
  target = getattr(layers_module, name, None)
  if target is None:
    raise TypeError(f"Layer {layer.name!r} is a {name}, which the other "
                    "Keras has no stock layer for; only stock layers and "
                    "PrunableConcatConv move between the two.")
  return target


def _accepted(cls, config):
  """`config` without the keys `cls` (a stock layer class) does not take,
  such as Keras 3's `quantization_config` for tf_keras."""
  parameters = set()
  for klass in cls.__mro__:
    if "__init__" in vars(klass):
      parameters |= set(inspect.signature(klass.__init__).parameters)
  parameters |= {"name", "trainable", "dtype"}
  return {k: v for k, v in config.items() if k in parameters}


def layer_variables(layer):
  """A layer's variables in an order both Kerases share.

  A `PrunableConcatConv` (either path's) by attribute path, since the two
  create their variables in different orders; any other layer's `weights`.
  """
  if _is_concat_conv(layer):
    return [_attribute(layer, path) for path in _CONCAT_CONV_WEIGHTS]
  return list(layer.weights)


def _copy_weights(source, target):
  if _is_concat_conv(source):
    for mine, theirs in zip(layer_variables(target), layer_variables(source)):
      mine.assign(np.asarray(theirs.numpy()))
    return
  target.set_weights(source.get_weights())


def from_tf_keras(model):
  """The Keras 3 counterpart of a tf_keras tfsdn model, weights included.

  Args:
    model: A functional tf_keras model (dense, pruned, wrapped by tfmot or
      stripped by `tfmot.sparsity.keras.strip_pruning`).

  Returns:
    A functional Keras 3 model with the same layer names and outputs.

  Raises:
    TypeError: if `model` is not a tf_keras model.
  """
  from tfsdn.compat import require_functional  # pylint: disable=g-import-not-at-top
  from tfsdn.prune import strip_wrappers  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  require_functional(model)
  model = strip_wrappers(model)

  def convert(layer):
    config = _plain(layer.get_config())
    # Keras 3 refuses '/' in names: tf_keras.applications' "conv1/conv"
    # becomes keras.applications' own "conv1_conv".
    config["name"] = config["name"].replace("/", "_")
    if _is_concat_conv(layer):
      config.pop("bn_synchronized", None)
      return PrunableConcatConv.from_config(config)
    if isinstance(layer.get_config().get("axis"), list) and type(
        layer).__name__ == "BatchNormalization" and len(config["axis"]) == 1:
      config["axis"] = config["axis"][0]  # tf_keras writes the built [3]
    target = _stock_class(keras.layers, layer)
    return target.from_config(_accepted(target, config))

  def node_parts(node):
    takes_list = bool(node.call_args) and isinstance(node.call_args[0],
                                                     (list, tuple))
    return (node.layer, list(node.keras_inputs), tf.nest.flatten(node.outputs),
            takes_list)

  return _walk(model, keras, convert,
               lambda m: m._nodes_by_depth, node_parts)  # pylint: disable=protected-access


def to_tf_keras(model):
  """The tf_keras counterpart of a Keras 3 tfsdn model, weights included.

  The result can be pruned further with tfmot (`tfsdn.prune_dense_connections`)
  or exported with the tfmot path's helpers.

  Raises:
    TypeError: if `model` is not a functional Keras 3 model.
  """
  require_keras3_model(model)
  import tf_keras  # pylint: disable=g-import-not-at-top
  import tfsdn  # pylint: disable=g-import-not-at-top

  def convert(layer):
    config = _plain(layer.get_config())
    if isinstance(layer, PrunableConcatConv):
      return tfsdn.PrunableConcatConv.from_config(config)
    target = _stock_class(tf_keras.layers, layer)
    return target.from_config(_accepted(target, config))

  def node_parts(node):
    args = node.arguments.args
    takes_list = bool(args) and isinstance(args[0], (list, tuple))
    return (node.operation, list(node.input_tensors), node.output_tensors,
            takes_list)

  return _walk(model, tf_keras, convert,
               lambda m: m._nodes_by_depth, node_parts)  # pylint: disable=protected-access
