"""`make_prunable`: turn an existing Keras DenseNet into a prunable one.

Finds every chain BatchNormalization -> ReLU -> Conv2D (no bias) in a
functional tf_keras model, such as `tf_keras.applications`
DenseNet121/169/201 or a user's own DenseNet, and replaces the BN, ReLU and
Conv2D by one `PrunableConcatConv` that carries their weights, so the new
model computes the same function and tfsdn can prune it. A chain whose BN
reads a Concatenate prunes dense connections; one whose BN reads a single
conv's output (the 3x3 conv after a DenseNet-B bottleneck) prunes that
conv's width: the filters no one reads any more are removed by strip.
"""

from absl import logging

from tfsdn.common import chains as plans
from tfsdn import graph
from tfsdn.compat import keras
from tfsdn.compat import require_functional
from tfsdn.common.chains import Chain  # pylint: disable=unused-import
from tfsdn.common.chains import ConversionPlan  # pylint: disable=unused-import
from tfsdn.common.chains import Skipped  # pylint: disable=unused-import
from tfsdn.prunable_concat_conv import PrunableConcatConv
from tfsdn.prune import strip_wrappers


def _flat(model):
  """`model` with nested functional models inlined; wrapped ones refused."""
  if strip_wrappers(model) is not model:
    raise ValueError(
        f"Model {model.name!r} is wrapped for pruning; make_prunable takes the "
        "model before prune_dense_connections.")
  return graph.flatten(model)


def _find_chains(model):
  """`(plan, chains by id(conv layer))` for a flat functional model."""
  return plans.find_chains(plans.GraphView(
      nodes=graph.topological_nodes(model), node_inputs=graph.node_inputs,
      node_output=graph.node_output, outputs=model.outputs,
      batch_norm=keras.layers.BatchNormalization,
      conv2d=keras.layers.Conv2D, concatenate=keras.layers.Concatenate,
      relu=keras.layers.ReLU, activation=keras.layers.Activation,
      serialize_activation=keras.activations.serialize))


def conversion_plan(model):
  """What `make_prunable(model)` would convert, and what it would skip and why.

  Args:
    model: A functional or Sequential tf_keras model.

  Returns:
    A `ConversionPlan`.

  Raises:
    TypeError: for Keras 3 objects and subclassed models.
  """
  require_functional(model)
  return _find_chains(_flat(model))[0]


def make_prunable(model, criterion="expected_l1", score_momentum=0.9,
                  group_lasso=0.0):
  """Returns a copy of `model` whose BN-ReLU-fed convolutions are prunable.

  Every chain BatchNormalization -> ReLU (a `ReLU` layer or
  `Activation("relu")`) -> Conv2D without bias, where the BatchNormalization
  and ReLU outputs feed nothing else, becomes one `PrunableConcatConv` named
  like the Conv2D, reading what the BN read (a Concatenate's output: dense
  connections; a conv's output, as after a DenseNet-B bottleneck: that
  conv's width) and carrying the BN's
  parameters and moving statistics and the conv's kernel, and their frozen
  state (`trainable=False` on the BN or the conv stays so; a frozen BN keeps
  normalising with its moving statistics) and `synchronized`. Chains whose
  BN uses renorm, virtual batches, an adjustment, or gamma/beta regularizers
  or constraints, or whose conv has a kernel constraint, are skipped with
  the reason. Everything else is copied with its name, config, weights and
  frozen state. Before any pruning the new model
  computes the same function as `model`. What was converted and what was
  skipped (with the reason) is logged; `conversion_plan(model)` returns it.

  Example:

  ```python
  base = tf_keras.applications.DenseNet121(weights="imagenet")
  model = tfsdn.make_prunable(base)
  pruned = tfsdn.prune_dense_connections(model, schedule)
  ```

  Args:
    model: A functional or Sequential tf_keras model. Nested functional
      models (`Sequential([DenseNet121(...), head])`) are inlined, so the
      result is one flat model.
    criterion: Contribution criterion of the new layers (see
      `PrunableConcatConv`).
    score_momentum: Momentum of the `"expected_l1"` statistics.
    group_lasso: Group-lasso strength of the new layers.

  Returns:
    A new functional tf_keras model; `model` is left unchanged.

  Raises:
    TypeError: for Keras 3 objects and subclassed models.
    ValueError: if no chain can be converted.
  """
  require_functional(model)
  # The new layers' arguments are checked before anything is rebuilt.
  PrunableConcatConv(1, criterion=criterion, score_momentum=score_momentum,
                     group_lasso=group_lasso)
  model = _flat(model)
  plan, chains = _find_chains(model)
  if not chains:
    raise plans.no_chain_error(model.name, plan)
  absorbed = set()
  for _, batch_norm, relu, _ in chains.values():
    absorbed.update((id(batch_norm), id(relu)))
  # A BN called with training=False (as in `base(x, training=False)`) runs
  # in inference mode; frozen, the new layer's BN does so too, while the
  # layer itself still measures its scores in training.
  inference_mode = {id(layer) for node, layer in graph.topological_nodes(model)
                    if id(layer) in absorbed and
                    graph.training_argument(node) is False}
  new, new_inputs = {}, []
  for node, layer in graph.topological_nodes(model):
    output = graph.node_output(node)
    if graph.is_input(node):
      tensor = graph.input_like(node, layer)
      new_inputs.append(tensor)
      new[id(output)] = tensor
    elif id(layer) in absorbed:
      continue
    elif id(layer) in chains:
      concatenated, batch_norm, _, conv = chains[id(layer)]
      new[id(output)] = _prunable_layer(
          batch_norm, conv, new[id(concatenated)], criterion, score_momentum,
          group_lasso, frozen_batch_norm=id(batch_norm) in inference_mode)
    else:
      copy = graph.copy_layer(layer)
      new[id(output)] = graph.call_like(node, copy, new)
      copy.set_weights(layer.get_weights())
  logging.info("make_prunable(%s): %s", model.name, plan)
  return graph.model_like(model, new_inputs, new)


def _prunable_layer(batch_norm, conv, inputs, criterion, score_momentum,
                    group_lasso, frozen_batch_norm=False):
  """A PrunableConcatConv with `batch_norm`'s and `conv`'s weights."""
  layer = PrunableConcatConv(
      **plans.layer_arguments(batch_norm, conv, criterion, score_momentum,
                              group_lasso, frozen_batch_norm,
                              keras.initializers.serialize),
      bn_synchronized=batch_norm.synchronized)
  output = layer(inputs)
  layer.batch_norm.set_weights(batch_norm.get_weights())
  layer.conv.set_weights(conv.get_weights())
  return output
