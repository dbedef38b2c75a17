"""`make_prunable` for Keras 3: turn an existing Keras 3 DenseNet into a
prunable one.

The Keras 3 counterpart of `tfsdn.convert`, on any backend: the chains it
converts and the reasons it leaves one alone come from the shared,
backend-free `tfsdn.common.chains`; this module only reads the Keras 3
graph and builds the new model. `keras.applications.DenseNet121/169/201`
convert as their tf_keras twins do (tests: same outputs to 1e-5).
"""

from absl import logging
import keras

from tfsdn.common import chains as plans
from tfsdn.keras3 import graph
from tfsdn.keras3.layer import PrunableConcatConv


def _is_wrapped(model):
  return any(isinstance(layer, PrunableConcatConv) for layer in
             graph.functional(model).layers)


def _view(model):
  return plans.GraphView(
      nodes=[(node, node.operation) for node in graph.nodes(model)],
      node_inputs=lambda node: list(node.input_tensors),
      node_output=lambda node: node.output_tensors[0],
      outputs=list(model.outputs),
      batch_norm=keras.layers.BatchNormalization,
      conv2d=keras.layers.Conv2D, concatenate=keras.layers.Concatenate,
      relu=keras.layers.ReLU, activation=keras.layers.Activation,
      serialize_activation=keras.activations.serialize)


def _flat(model):
  flat = graph.flatten(model)
  if _is_wrapped(flat):
    raise ValueError(
        f"Model {model.name!r} already has PrunableConcatConv layers; "
        "make_prunable takes a model of stock Keras layers.")
  return flat


def conversion_plan(model):
  """What `make_prunable(model)` would convert, and what it would skip and why.

  Args:
    model: A functional or Sequential Keras 3 model.

  Returns:
    A `tfsdn.common.chains.ConversionPlan`.

  Raises:
    TypeError: for tf_keras objects and subclassed models.
  """
  return plans.find_chains(_view(_flat(model)),
                           synchronized_supported=False)[0]


def make_prunable(model, criterion="expected_l1", score_momentum=0.9,
                  group_lasso=0.0):
  """Returns a copy of `model` whose BN-ReLU-fed convolutions are prunable.

  `tfsdn.make_prunable` for Keras 3 models, on any backend. Every chain
  BatchNormalization -> ReLU (a `ReLU` layer or `Activation("relu")`) ->
  Conv2D without bias, where the BN and ReLU outputs feed nothing else,
  becomes one `tfsdn.keras3.PrunableConcatConv` named like the Conv2D,
  reading what the BN read and carrying the BN's parameters and moving
  statistics and the conv's kernel, and their frozen state. A BN run in
  inference mode (a backbone called with `training=False`) stays frozen.
  Chains the layer cannot represent (a synchronized BN, gamma/beta
  regularizers or constraints, a conv with a bias, an activation or a
  kernel constraint, ...) are skipped with the reason.
  Everything else is copied with its name, config and weights. Before any
  pruning the new model computes the same function as `model`.

  Example:

  ```python
  base = keras.applications.DenseNet121(weights=None, input_shape=(64, 64, 3),
                                        classes=10)
  model = sdn.make_prunable(base)
  model.fit(..., callbacks=[sdn.Pruning([(200, 0.25), (400, 0.5)])])
  ```

  Args:
    model: A functional or Sequential Keras 3 model. Nested models
      (`Sequential([DenseNet121(...), head])`) are inlined, so the result
      is one flat model.
    criterion: Contribution criterion of the new layers.
    score_momentum: Momentum of the `"expected_l1"` statistics.
    group_lasso: Group-lasso strength of the new layers.

  Returns:
    A new functional Keras 3 model; `model` is left unchanged.

  Raises:
    TypeError: for tf_keras objects and subclassed models.
    ValueError: if no chain can be converted, or for a bad layer argument
      (checked before anything is rebuilt).
  """
  graph.functional(model)
  PrunableConcatConv(1, criterion=criterion, score_momentum=score_momentum,
                     group_lasso=group_lasso)
  model = _flat(model)
  plan, chains = plans.find_chains(_view(model), synchronized_supported=False)
  if not chains:
    raise plans.no_chain_error(model.name, plan)
  absorbed = set()
  for _, batch_norm, relu, _ in chains.values():
    absorbed.update((id(batch_norm), id(relu)))
  # A BN called with training=False (a backbone called so, inlined by
  # flatten) runs in inference mode; frozen, the new layer's BN does so too.
  inference_mode = {id(node.operation) for node in graph.nodes(model)
                    if id(node.operation) in absorbed and
                    node.arguments.kwargs.get("training") is False}
  new, new_inputs = {}, []
  for node in graph.nodes(model):
    layer = node.operation
    output = node.output_tensors[0]
    if node.is_input:
      fresh = keras.Input(shape=output.shape[1:], dtype=output.dtype,
                          name=layer.name)
      new_inputs.append(fresh)
      new[id(output)] = fresh
    elif id(layer) in absorbed:
      continue
    elif id(layer) in chains:
      source, batch_norm, _, conv = chains[id(layer)]
      new[id(output)] = _prunable_layer(
          batch_norm, conv, new[id(source)], criterion, score_momentum,
          group_lasso, frozen_batch_norm=id(batch_norm) in inference_mode)
    else:
      copy = type(layer).from_config(layer.get_config())
      args, kwargs = node.arguments.fill_in(new)
      new[id(output)] = copy(*args, **kwargs)
      copy.set_weights(layer.get_weights())
  logging.info("make_prunable(%s): %s", model.name, plan)
  outputs = [new[id(t)] for t in model.outputs]
  return keras.Model(new_inputs if len(new_inputs) > 1 else new_inputs[0],
                     outputs if len(outputs) > 1 else outputs[0],
                     name=model.name)


def _prunable_layer(batch_norm, conv, inputs, criterion, score_momentum,
                    group_lasso, frozen_batch_norm=False):
  """A PrunableConcatConv with `batch_norm`'s and `conv`'s weights."""
  layer = PrunableConcatConv(
      **plans.layer_arguments(batch_norm, conv, criterion, score_momentum,
                              group_lasso, frozen_batch_norm,
                              keras.initializers.serialize))
  output = layer(inputs)
  layer.batch_norm.set_weights(batch_norm.get_weights())
  layer.conv.set_weights(conv.get_weights())
  return output
