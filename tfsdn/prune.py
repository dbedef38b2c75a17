"""`prune_dense_connections`: wrap every PrunableConcatConv for tfmot."""

import fnmatch

import tensorflow_model_optimization as tfmot

from tfsdn import allocation as allocation_lib
from tfsdn import internals
from tfsdn.allocation import GlobalAllocation
from tfsdn.compat import keras
from tfsdn.compat import require_functional
from tfsdn.prunable_concat_conv import PrunableConcatConv


# tfmot options that mean nothing for a vector of per-channel scores.
_MEANINGLESS_WRAPPER_KWARGS = ("block_size", "block_pooling_type",
                               "sparsity_m_by_n", "pruning_policy",
                               "pruning_schedule")


def unwrap(layer):
  """The layer inside a tfmot pruning wrapper, or the layer itself."""
  if isinstance(layer, internals.PruneLowMagnitude):
    return layer.layer
  return layer


def _has_wrappers(model):
  return any(isinstance(layer, internals.PruneLowMagnitude) or (
      isinstance(layer, keras.Model) and _has_wrappers(layer))
             for layer in model.layers)


def strip_wrappers(model):
  """`tfmot.sparsity.keras.strip_pruning(model)` if it has wrappers, else `model`.

  Wrappers inside nested models count too.
  """
  if _has_wrappers(model):
    return tfmot.sparsity.keras.strip_pruning(model)
  return model


def prunable_layers(model):
  """All `PrunableConcatConv` layers of a model, wrapped or not, nested too.

  Args:
    model: A tf_keras model.

  Returns:
    A list of `PrunableConcatConv` layers in model order.
  """
  found = []
  for layer in map(unwrap, model.layers):
    if isinstance(layer, PrunableConcatConv):
      found.append(layer)
    elif isinstance(layer, keras.Model):
      found.extend(prunable_layers(layer))
  return found


def prune_dense_connections(model, schedule, **wrapper_kwargs):
  """Returns a copy of `model` whose dense connections tfmot will prune.

  Every `PrunableConcatConv` (also inside nested functional models) is
  wrapped by `tfmot.sparsity.keras.prune_low_magnitude` with `schedule`;
  every other layer is copied unchanged. Weights are copied, so the original
  model is left as it was. Train the result with
  `tfmot.sparsity.keras.UpdatePruningStep()` and `tfsdn.UpdateScores()`
  (which computes the scores before each stage) among the callbacks, and
  remove the wrappers afterwards with `tfmot.sparsity.keras.strip_pruning`
  or `tfsdn.strip_to_compact`.

  Example:

  ```python
  model = tfsdn.densenet.DenseNet(depth=40, growth_rate=12)
  pruned = tfsdn.prune_dense_connections(
      model, tfsdn.StagedSparsity([(2000, 0.25), (4000, 0.5)]))
  pruned.compile(...)
  pruned.fit(data, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(),
                              tfsdn.UpdateScores()])
  ```

  Args:
    model: A functional or Sequential tf_keras model with at least one
      `PrunableConcatConv`.
    schedule: What prunes each layer: a `tfmot.sparsity.keras.PruningSchedule`
      (usually a `tfsdn.StagedSparsity`) for every layer alike; a
      `tfsdn.GlobalAllocation` (one ranking across layers under a MAC
      budget; its ignored layers are not wrapped); or a dict from layer
      names or `fnmatch` patterns to schedules (first match wins, `None`
      leaves a layer unpruned; every prunable layer must match a key).
    **wrapper_kwargs: Passed on to `prune_low_magnitude` (layer keyword
      arguments such as `dtype`); its block, m-by-n and policy options are
      refused.

  Returns:
    A new tf_keras model.

  Raises:
    TypeError: for Keras 3 objects, subclassed models, or a `schedule` that
      is not a tfmot `PruningSchedule`.
    ValueError: if the model has no `PrunableConcatConv`, a dict of
      schedules misses a layer, or a `GlobalAllocation`'s last budget is
      out of reach (its floor and overrides keep more).
  """
  require_functional(model)
  meaningless = sorted(set(wrapper_kwargs) & set(_MEANINGLESS_WRAPPER_KWARGS))
  if meaningless:
    raise TypeError(
        f"prune_dense_connections does not take {meaningless}: a "
        "PrunableConcatConv's prunable weight is one score per input channel, "
        "so block sparsity, m-by-n sparsity and pruning policies do not apply "
        "(the schedule is the second argument). Received: "
        f"{ {k: wrapper_kwargs[k] for k in meaningless} }")
  schedule_of = _schedule_chooser(schedule)
  wrapped = [layer.name for layer in model.layers
             if isinstance(layer, internals.PruneLowMagnitude)]
  if wrapped:
    raise ValueError(
        f"Model {model.name!r} is already wrapped for pruning (layers "
        f"{wrapped[:3]}...); call tfmot.sparsity.keras.strip_pruning first.")
  layers = prunable_layers(model)
  if not layers:
    raise ValueError(
        f"Model {model.name!r} has no PrunableConcatConv layer to prune. Build "
        "it with tfsdn.densenet or convert it with tfsdn.make_prunable.")
  chosen = {layer.name: schedule_of(layer) for layer in layers}
  if isinstance(schedule, GlobalAllocation):
    allocation_lib.check_reachable(
        model, schedule, [l for l in layers if chosen[l.name] is not None],
        layers)

  def clone(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, clone_function=clone)
    copy = layer.__class__.from_config(layer.get_config())
    if isinstance(layer, PrunableConcatConv) and chosen[layer.name] is not None:
      kwargs = dict(wrapper_kwargs)
      policy = copy.dtype_policy
      if policy.compute_dtype != policy.variable_dtype:
        # tfmot multiplies the score by its mask inside the wrapper; under a
        # mixed policy the wrapper's mask would be autocast to 16 bits while
        # the score stays float32. A float32 wrapper keeps both in float32;
        # the BN and conv inside keep the mixed policy. Without autocast the
        # wrapper hands the 16-bit features on as they are, so the
        # concatenation (a DenseNet's largest tensor) stays 16-bit too.
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("autocast", False)
      return tfmot.sparsity.keras.prune_low_magnitude(
          copy, pruning_schedule=chosen[layer.name], **kwargs)
    return copy

  pruned = keras.models.clone_model(model, clone_function=clone)
  _copy_weights(model, pruned)
  for layer in prunable_layers(pruned):
    if chosen[layer.name] is None:
      layer.measuring.assign(0.0)  # Never pruned: no statistics needed.
  return pruned


def _schedule_chooser(schedule):
  """`layer -> PruningSchedule or None (not pruned)` for each schedule kind."""
  if isinstance(schedule, GlobalAllocation):
    return lambda layer: (None if schedule.is_ignored(layer.name) else
                          allocation_lib.AllocatedSparsity(schedule))
  if isinstance(schedule, dict):
    for pattern, value in schedule.items():
      if not isinstance(pattern, str) or not (
          value is None or
          isinstance(value, tfmot.sparsity.keras.PruningSchedule)):
        raise TypeError(
            "A dict of schedules maps layer names or fnmatch patterns to "
            "tfmot PruningSchedules (or None: not pruned). Received: "
            f"{pattern!r}: {value!r}")

    def choose(layer):
      for pattern, value in schedule.items():
        if fnmatch.fnmatchcase(layer.name, pattern):
          return value
      raise ValueError(
          f"No schedule for prunable layer {layer.name!r}: the dict's keys "
          f"{list(schedule)} match none of its names (add '*' for a default, "
          "or map the layer to None to leave it unpruned).")

    return choose
  if not isinstance(schedule, tfmot.sparsity.keras.PruningSchedule):
    raise TypeError(
        "schedule must be a tfmot.sparsity.keras.PruningSchedule such as "
        "tfsdn.StagedSparsity, a tfsdn.GlobalAllocation, or a dict from "
        f"layer names to schedules. Received: schedule={schedule!r}")
  return lambda layer: schedule


def _copy_weights(source, target):
  """Copies weights layer by layer; wrappers take their inner layer's."""
  if len(source.layers) != len(target.layers):
    raise AssertionError("clone_model changed the number of layers")
  for src, dst in zip(source.layers, target.layers):
    if isinstance(src, keras.Model):
      _copy_weights(src, dst)
    else:
      dst.set_weights(src.get_weights())
