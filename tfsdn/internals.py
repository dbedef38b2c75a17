"""Every private tf_keras and tfmot API that tfsdn uses, in one place.

tfsdn rewrites functional models node by node, which tf_keras exposes only
through private attributes, and finds tfmot's pruning wrapper, which tfmot
does not export. Each use is wrapped here, so a tf_keras or tfmot release
that moves one breaks this module alone; these uses are why setup.py pins
TensorFlow and tf_keras to one minor version.

- `KerasTensor` (tf_keras/src/engine/keras_tensor.py): the symbolic tensors
  of a functional model, to tell them from constants in a node's arguments.
- `TFOpLambda` (tf_keras/src/layers/core/tf_op_layer.py): the layer that a
  TF op such as `tf.gather` becomes in a functional model.
- `Model._nodes_by_depth` and `Model._is_graph_network`: the node graph of a
  functional model, and whether a model has one.
- `Node.call_args`, `Node.call_kwargs`, `Node.is_input`, `Node.outputs`,
  `Node.layer`: how a node called its layer.
- `Model._steps_per_execution`: how many steps one call of the compiled
  training function runs.
- tfmot's `PruneLowMagnitude` (sparsity/keras/pruning_wrapper.py): the
  wrapper `prune_low_magnitude` puts around each layer.
"""

import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude  # pylint: disable=unused-import
from tf_keras.src.engine.keras_tensor import KerasTensor
from tf_keras.src.layers.core.tf_op_layer import TFOpLambda


def is_graph_network(model):
  """True for functional and Sequential models (they have a node graph)."""
  return bool(getattr(model, "_is_graph_network", False))


def nodes_by_depth(model):
  """The model's nodes grouped by depth: outputs at 0, inputs deepest."""
  return model._nodes_by_depth  # pylint: disable=protected-access


def call_arguments(node):
  """`(args, kwargs)` with which `node` called its layer."""
  return node.call_args, node.call_kwargs


def steps_per_execution(model):
  """Training steps per call of the compiled train function (1 if unset)."""
  variable = getattr(model, "_steps_per_execution", None)
  return 1 if variable is None else int(variable.numpy())


def node_layer(node):
  """The layer a node called."""
  return node.layer


def node_is_input(node):
  """True for the node of an `Input` layer."""
  return node.is_input


def node_outputs(node):
  """The KerasTensors a node produced, flattened."""
  return tf.nest.flatten(node.outputs)


def is_keras_tensor(value):
  return isinstance(value, KerasTensor)


def tf_op_symbol(layer):
  """The TF API symbol of a TF-op layer (`"gather"`), else None."""
  return layer.symbol if isinstance(layer, TFOpLambda) else None
