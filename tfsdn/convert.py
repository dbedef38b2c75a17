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

import dataclasses

from absl import logging

from tfsdn import graph
from tfsdn.compat import keras
from tfsdn.compat import require_functional
from tfsdn.prunable_concat_conv import PrunableConcatConv
from tfsdn.prune import strip_wrappers


@dataclasses.dataclass(frozen=True)
class Chain:
  """Layer names of one BN -> ReLU -> Conv2D chain and what the BN reads."""
  source: str
  batch_norm: str
  relu: str
  conv: str


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A BatchNormalization that does not start a convertible chain."""
  batch_norm: str
  reason: str


@dataclasses.dataclass
class ConversionPlan:
  """What `make_prunable` converts and what it leaves alone, and why.

  Attributes:
    converted: `Chain`s that become a `PrunableConcatConv` named like their
      Conv2D.
    skipped: `Skipped` entries, one per BatchNormalization that does not
      start a convertible chain.
  """
  converted: list
  skipped: list

  def __str__(self):
    lines = [f"{len(self.converted)} chains converted to PrunableConcatConv, "
             f"{len(self.skipped)} left alone."]
    lines += [f"  converted {c.source} -> {c.batch_norm} -> {c.relu} -> "
              f"{c.conv}" for c in self.converted]
    lines += [f"  skipped {s.batch_norm}: {s.reason}" for s in self.skipped]
    return "\n".join(lines)


def _is_relu(layer):
  if isinstance(layer, keras.layers.ReLU):
    return (layer.max_value is None and float(layer.negative_slope) == 0.0
            and float(layer.threshold) == 0.0)
  if isinstance(layer, keras.layers.Activation):
    return keras.activations.serialize(layer.activation) == "relu"
  return False


def _conv_problem(conv):
  """Why a Conv2D cannot be the conv of a PrunableConcatConv, or None."""
  if type(conv) is not keras.layers.Conv2D:  # pylint: disable=unidiomatic-typecheck
    return (f"its ReLU feeds {conv.name!r}, a {type(conv).__name__}, not a "
            "plain Conv2D")
  if conv.use_bias:
    return (f"Conv2D {conv.name!r} has a bias (use_bias=True); a "
            "PrunableConcatConv's conv has none")
  if keras.activations.serialize(conv.activation) != "linear":
    return (f"Conv2D {conv.name!r} has activation="
            f"{keras.activations.serialize(conv.activation)!r}")
  if conv.groups != 1 or tuple(conv.dilation_rate) != (1, 1):
    return (f"Conv2D {conv.name!r} has groups={conv.groups}, "
            f"dilation_rate={tuple(conv.dilation_rate)}")
  if conv.data_format != "channels_last":
    return f"Conv2D {conv.name!r} has data_format={conv.data_format!r}"
  if conv.padding not in ("same", "valid"):
    return f"Conv2D {conv.name!r} has padding={conv.padding!r}"
  if conv.kernel_constraint is not None:
    return (f"Conv2D {conv.name!r} has a kernel_constraint "
            f"({conv.kernel_constraint!r}), which a PrunableConcatConv drops")
  if conv.activity_regularizer is not None:
    return f"Conv2D {conv.name!r} has an activity_regularizer"
  return None


def _batch_norm_problem(batch_norm):
  if batch_norm.renorm:
    return "it uses batch renormalization (renorm=True)"
  if batch_norm.virtual_batch_size is not None:
    # Checked first: a virtual batch moves the BN's axis when it is built.
    return f"it has virtual_batch_size={batch_norm.virtual_batch_size}"
  axis = batch_norm.axis if isinstance(batch_norm.axis, int) else (
      batch_norm.axis[0] if len(batch_norm.axis) == 1 else None)
  if axis not in (-1, 3):
    return f"it normalises axis={batch_norm.axis!r}, not the channel axis"
  if not (batch_norm.center and batch_norm.scale):
    return (f"it has center={batch_norm.center}, scale={batch_norm.scale}; "
            "a PrunableConcatConv's BatchNormalization has both")
  if batch_norm.adjustment is not None:
    return "it has an adjustment function"
  for attribute in ("beta_regularizer", "gamma_regularizer",
                    "beta_constraint", "gamma_constraint"):
    if getattr(batch_norm, attribute) is not None:
      return (f"it has a {attribute} ({getattr(batch_norm, attribute)!r}), "
              "which a PrunableConcatConv's BatchNormalization would drop")
  return None


def _flat(model):
  """`model` with nested functional models inlined; wrapped ones refused."""
  if strip_wrappers(model) is not model:
    raise ValueError(
        f"Model {model.name!r} is wrapped for pruning; make_prunable takes the "
        "model before prune_dense_connections.")
  return graph.flatten(model)


def _find_chains(model):
  """`(plan, chains by id(conv layer))` for a functional model."""
  nodes = graph.topological_nodes(model)
  producer = {id(graph.node_output(n)): (n, layer) for n, layer in nodes}
  consumers = {}
  for node, layer in nodes:
    for tensor in graph.node_inputs(node):
      consumers.setdefault(id(tensor), []).append((node, layer))
  outputs = {id(t) for t in model.outputs}

  def only_consumer(tensor, name):
    """`(node, layer, None)` of the one reader of `tensor`, or a reason."""
    readers = consumers.get(id(tensor), [])
    if id(tensor) in outputs:
      return None, None, f"the output of {name!r} is a model output"
    if len(readers) != 1:
      return None, None, (
          f"the output of {name!r} feeds {len(readers)} layers "
          f"({', '.join(l.name for _, l in readers)}), not one")
    return readers[0] + (None,)

  plan, chains = ConversionPlan([], []), {}
  for node, layer in nodes:
    if not isinstance(layer, keras.layers.BatchNormalization):
      continue
    inputs = graph.node_inputs(node)
    if len(inputs) != 1 or id(inputs[0]) not in producer:
      continue
    source = producer[id(inputs[0])][1]
    reason = _batch_norm_problem(layer)
    if inputs[0].shape.rank != 4:
      reason = f"it reads a rank-{inputs[0].shape.rank} tensor, not NHWC maps"
    if (reason is None and isinstance(source, keras.layers.Concatenate) and
        not graph.is_channel_concat(source)):
      reason = f"{source.name!r} concatenates along axis={source.axis}"
    if reason is None:
      relu_node, relu, reason = only_consumer(graph.node_output(node),
                                              layer.name)
    if reason is None and not _is_relu(relu):
      reason = f"it feeds {relu.name!r}, a {type(relu).__name__}, not a ReLU"
    if reason is None:
      _, conv, reason = only_consumer(graph.node_output(relu_node), relu.name)
    if reason is None:
      reason = _conv_problem(conv)
    if reason is not None:
      plan.skipped.append(Skipped(layer.name, reason))
      continue
    plan.converted.append(Chain(source.name, layer.name, relu.name, conv.name))
    chains[id(conv)] = (inputs[0], layer, relu, conv)
  return plan, chains


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
    details = "".join(f"\n  {s.batch_norm}: {s.reason}" for s in plan.skipped)
    raise ValueError(
        f"Model {model.name!r} has no BatchNormalization -> ReLU -> Conv2D "
        "(use_bias=False) chain to convert"
        + (f"; skipped:{details}" if details else "."))
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
      conv.filters, conv.kernel_size, strides=conv.strides,
      padding=conv.padding,
      kernel_initializer=keras.initializers.serialize(
          conv.kernel_initializer),
      kernel_regularizer=conv.kernel_regularizer, criterion=criterion,
      score_momentum=score_momentum, group_lasso=group_lasso,
      bn_momentum=batch_norm.momentum, bn_epsilon=batch_norm.epsilon,
      bn_synchronized=batch_norm.synchronized,
      batch_norm_trainable=batch_norm.trainable and not frozen_batch_norm,
      conv_trainable=conv.trainable, name=conv.name, dtype=conv.dtype_policy)
  output = layer(inputs)
  layer.batch_norm.set_weights(batch_norm.get_weights())
  layer.conv.set_weights(conv.get_weights())
  return output
