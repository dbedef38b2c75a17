"""Which BN -> ReLU -> Conv2D chains `make_prunable` converts, on either Keras.

Backend-free: the search and the reasons a chain is left alone are written
once here; `tfsdn.convert` (tf_keras) and `tfsdn.keras3.convert` (Keras 3)
give it their graph through a `GraphView` and only build what it decides.
Layers are read by duck typing (attributes both Kerases share; those only
one has, such as tf_keras' `renorm`, are read with a default).
"""

import dataclasses
from typing import Any, Callable


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


@dataclasses.dataclass(frozen=True)
class GraphView:
  """How one Keras exposes a functional graph and its layer classes.

  Attributes:
    nodes: `(node, layer)` pairs, producers before consumers, input layers
      included.
    node_inputs: node -> the tensors it reads.
    node_output: node -> its (first) output tensor.
    outputs: the model's output tensors.
    batch_norm: the BatchNormalization class.
    conv2d: the Conv2D class.
    concatenate: the Concatenate class.
    relu: the ReLU layer class.
    activation: the Activation layer class.
    serialize_activation: activation function -> its name.
  """
  nodes: list
  node_inputs: Callable[[Any], list]
  node_output: Callable[[Any], Any]
  outputs: list
  batch_norm: type
  conv2d: type
  concatenate: type
  relu: type
  activation: type
  serialize_activation: Callable[[Any], str]


def is_relu(layer, view):
  """True for a plain ReLU: a `ReLU` layer without options or
  `Activation("relu")`."""
  if isinstance(layer, view.relu):
    return (layer.max_value is None and float(layer.negative_slope) == 0.0
            and float(layer.threshold) == 0.0)
  if isinstance(layer, view.activation):
    return view.serialize_activation(layer.activation) == "relu"
  return False


def conv_problem(conv, view):
  """Why a Conv2D cannot be the conv of a PrunableConcatConv, or None."""
  if type(conv) is not view.conv2d:  # pylint: disable=unidiomatic-typecheck
    return (f"its ReLU feeds {conv.name!r}, a {type(conv).__name__}, not a "
            "plain Conv2D")
  if conv.use_bias:
    return (f"Conv2D {conv.name!r} has a bias (use_bias=True); a "
            "PrunableConcatConv's conv has none")
  if view.serialize_activation(conv.activation) != "linear":
    return (f"Conv2D {conv.name!r} has activation="
            f"{view.serialize_activation(conv.activation)!r}")
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


def batch_norm_problem(batch_norm, synchronized_supported=True):
  """Why a BatchNormalization cannot be a PrunableConcatConv's, or None.

  Args:
    batch_norm: A BatchNormalization layer of either Keras.
    synchronized_supported: False where the PrunableConcatConv has no
      synchronized BatchNormalization (the Keras 3 one).
  """
  if getattr(batch_norm, "renorm", False):
    return "it uses batch renormalization (renorm=True)"
  if getattr(batch_norm, "virtual_batch_size", None) is not None:
    # Checked first: a virtual batch moves the BN's axis when it is built.
    return f"it has virtual_batch_size={batch_norm.virtual_batch_size}"
  axis = batch_norm.axis if isinstance(batch_norm.axis, int) else (
      batch_norm.axis[0] if len(batch_norm.axis) == 1 else None)
  if axis not in (-1, 3):
    return f"it normalises axis={batch_norm.axis!r}, not the channel axis"
  if not (batch_norm.center and batch_norm.scale):
    return (f"it has center={batch_norm.center}, scale={batch_norm.scale}; "
            "a PrunableConcatConv's BatchNormalization has both")
  if getattr(batch_norm, "adjustment", None) is not None:
    return "it has an adjustment function"
  if (not synchronized_supported and
      getattr(batch_norm, "synchronized", False)):
    return ("it is synchronized (synchronized=True), which the Keras 3 "
            "PrunableConcatConv's BatchNormalization is not")
  for attribute in ("beta_regularizer", "gamma_regularizer",
                    "beta_constraint", "gamma_constraint"):
    if getattr(batch_norm, attribute, None) is not None:
      return (f"it has a {attribute} ({getattr(batch_norm, attribute)!r}), "
              "which a PrunableConcatConv's BatchNormalization would drop")
  return None


def find_chains(view, synchronized_supported=True):
  """The convertible chains of a functional graph.

  A chain is BatchNormalization -> ReLU -> Conv2D (no bias) where the BN
  and ReLU outputs feed nothing else and are not model outputs; the BN
  reads one rank-4 tensor (a channel Concatenate's output: dense
  connections; any other layer's: that layer's width).

  Args:
    view: A `GraphView` of the (flat) model.
    synchronized_supported: See `batch_norm_problem`.

  Returns:
    `(plan, chains)`: a `ConversionPlan`, and for each converted chain,
    by `id(conv layer)`, `(input tensor, batch_norm, relu, conv)` layers.
  """
  producer = {id(view.node_output(n)): (n, layer) for n, layer in view.nodes}
  consumers = {}
  for node, layer in view.nodes:
    for tensor in view.node_inputs(node):
      consumers.setdefault(id(tensor), []).append((node, layer))
  outputs = {id(t) for t in view.outputs}

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
  for node, layer in view.nodes:
    if not isinstance(layer, view.batch_norm):
      continue
    inputs = view.node_inputs(node)
    if len(inputs) != 1 or id(inputs[0]) not in producer:
      continue
    source = producer[id(inputs[0])][1]
    reason = batch_norm_problem(layer, synchronized_supported)
    rank = len(inputs[0].shape)
    if rank != 4:
      reason = f"it reads a rank-{rank} tensor, not NHWC maps"
    if (reason is None and isinstance(source, view.concatenate) and
        source.axis not in (-1, 3)):
      reason = f"{source.name!r} concatenates along axis={source.axis}"
    if reason is None:
      relu_node, relu, reason = only_consumer(view.node_output(node),
                                              layer.name)
    if reason is None and not is_relu(relu, view):
      reason = f"it feeds {relu.name!r}, a {type(relu).__name__}, not a ReLU"
    if reason is None:
      _, conv, reason = only_consumer(view.node_output(relu_node), relu.name)
    if reason is None:
      reason = conv_problem(conv, view)
    if reason is not None:
      plan.skipped.append(Skipped(layer.name, reason))
      continue
    plan.converted.append(Chain(source.name, layer.name, relu.name, conv.name))
    chains[id(conv)] = (inputs[0], layer, relu, conv)
  return plan, chains


def no_chain_error(model_name, plan):
  """The ValueError for a model with nothing to convert."""
  details = "".join(f"\n  {s.batch_norm}: {s.reason}" for s in plan.skipped)
  return ValueError(
      f"Model {model_name!r} has no BatchNormalization -> ReLU -> Conv2D "
      "(use_bias=False) chain to convert"
      + (f"; skipped:{details}" if details else "."))


def layer_arguments(batch_norm, conv, criterion, score_momentum, group_lasso,
                    frozen_batch_norm, serialize_initializer):
  """The `PrunableConcatConv` arguments that carry a chain's BN and conv.

  Both paths' `make_prunable` build their layer from these (the tfmot
  path adds `bn_synchronized`, which the Keras 3 layer has not).

  Args:
    batch_norm: The chain's BatchNormalization layer.
    conv: The chain's Conv2D layer.
    criterion: See `PrunableConcatConv`.
    score_momentum: See `PrunableConcatConv`.
    group_lasso: See `PrunableConcatConv`.
    frozen_batch_norm: True if the BN runs in inference mode (called with
      `training=False`): the new layer's BN is then frozen.
    serialize_initializer: That Keras' `initializers.serialize`.
  """
  return dict(
      filters=conv.filters, kernel_size=conv.kernel_size,
      strides=conv.strides, padding=conv.padding,
      kernel_initializer=serialize_initializer(conv.kernel_initializer),
      kernel_regularizer=conv.kernel_regularizer, criterion=criterion,
      score_momentum=score_momentum, group_lasso=group_lasso,
      bn_momentum=batch_norm.momentum, bn_epsilon=batch_norm.epsilon,
      batch_norm_trainable=batch_norm.trainable and not frozen_batch_norm,
      conv_trainable=conv.trainable, name=conv.name, dtype=conv.dtype_policy)
