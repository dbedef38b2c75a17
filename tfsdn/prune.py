"""`prune_dense_connections`: wrap every PrunableConcatConv for tfmot."""

import fnmatch
import os

import tensorflow_model_optimization as tfmot

from absl import logging

from tfsdn import allocation as allocation_lib
from tfsdn import graph
from tfsdn import internals
from tfsdn.allocation import GlobalAllocation
from tfsdn.callbacks import UpdateScores
from tfsdn.callbacks import pruning_wrappers
from tfsdn.compat import keras
from tfsdn.compat import require_functional
from tfsdn.prunable_concat_conv import PrunableConcatConv
# Where a model's PrunableConcatConv layers are found: beside the layer,
# re-exported here (tfsdn.prune.prunable_layers, tfsdn.prune.unwrap, ...).
from tfsdn.prunable_concat_conv import _has_wrappers  # pylint: disable=unused-import
from tfsdn.prunable_concat_conv import prunable_layers
from tfsdn.prunable_concat_conv import strip_wrappers
from tfsdn.prunable_concat_conv import unwrap


# tfmot options that mean nothing for a vector of per-channel scores.
_MEANINGLESS_WRAPPER_KWARGS = ("block_size", "block_pooling_type",
                               "sparsity_m_by_n", "pruning_policy",
                               "pruning_schedule")


@keras.utils.register_keras_serializable(package="tfsdn")
class PruningModel(keras.Model):
  """The functional model `prune_dense_connections` returns.

  A plain functional tf_keras model whose `fit` makes sure the stages run:
  tfmot's `UpdatePruningStep` alone only advances the pruning step, and a
  stage of a `PrunableConcatConv` prunes by contribution scores that
  `tfsdn.UpdateScores` computes right before it. So while the model holds
  pruning wrappers, `fit` adds a `tfsdn.UpdateScores()` (which also does
  `UpdatePruningStep`'s job) unless one is among the callbacks: the tfmot
  idiom `fit(..., callbacks=[UpdatePruningStep()])` prunes as scheduled.
  Pass your own `tfsdn.UpdateScores(...)` for its options (`log_dir`,
  `nested`). A custom training loop must call the callbacks itself.
  """

  def fit(self, *args, callbacks=None, **kwargs):  # pylint: disable=arguments-differ
    return super().fit(*args, callbacks=_with_update_scores(self, callbacks),
                       **kwargs)

  def save(self, filepath, *args, **kwargs):  # pylint: disable=arguments-differ
    """`keras.Model.save`, refusing HDF5 while the model holds wrappers.

    Raises:
      ValueError: for an HDF5 path (`.h5`, `.hdf5`) or `save_format="h5"`
        while pruning wrappers are in the model: HDF5 cannot hold two
        weights of one name, and tfmot's wrappers repeat the wrapped
        layer's names (h5py's "name already exists", after a half-written
        file). Save as `.keras` (load under
        `tfmot.sparsity.keras.prune_scope()`), or strip first.
    """
    save_format = kwargs.get("save_format", args[1] if len(args) > 1 else None)
    path = str(filepath) if isinstance(filepath, (str, os.PathLike)) else ""
    hdf5 = (str(save_format).lower() in ("h5", "hdf5") or
            path.lower().endswith((".h5", ".hdf5")))
    if hdf5 and pruning_wrappers(self):
      raise ValueError(
          f"Cannot save {self.name!r} to HDF5 ({filepath!r}) while it holds "
          "pruning wrappers: HDF5 cannot hold their repeated weight names. "
          "Save it as model.save('pruned.keras') and load it under "
          "tfmot.sparsity.keras.prune_scope(), or save tfsdn.strip(model)"
          ".model, which has stock layers.")
    return super().save(filepath, *args, **kwargs)


def _with_update_scores(model, callbacks):
  """`callbacks` plus a `tfsdn.UpdateScores` if the model needs one."""
  if isinstance(callbacks, keras.callbacks.CallbackList):
    return callbacks  # Built by the caller: taken as it is.
  callbacks = [] if callbacks is None else list(callbacks)
  if (not any(isinstance(c, UpdateScores) for c in callbacks) and
      pruning_wrappers(model)):
    logging.info("fit: added tfsdn.UpdateScores() to the callbacks of %r: "
                 "it computes the contribution scores before every stage.",
                 model.name)
    callbacks.append(UpdateScores())
  return callbacks


def prune_dense_connections(model, schedule, **wrapper_kwargs):
  """Returns a copy of `model` whose dense connections tfmot will prune.

  Every `PrunableConcatConv` (also inside nested functional models) is
  wrapped by `tfmot.sparsity.keras.prune_low_magnitude` with `schedule`;
  every other layer is copied unchanged. Weights are copied, so the original
  model is left as it was. Train the result with `model.fit` and tfmot's
  `UpdatePruningStep()` or `tfsdn.UpdateScores()` (which computes the
  scores before each stage and checks each stage after it, and also does
  `UpdatePruningStep`'s job) among the callbacks; the returned model's
  `fit` adds a `tfsdn.UpdateScores()` if none is there (`PruningModel`).
  Remove the wrappers afterwards with `tfmot.sparsity.keras.strip_pruning`
  or `tfsdn.strip`.

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
    A new functional tf_keras model (a `PruningModel`).

  Raises:
    TypeError: for Keras 3 objects, subclassed models, or a `schedule` that
      is not a tfmot `PruningSchedule`.
    ValueError: if the model has no `PrunableConcatConv`, a nested model
      holding prunable layers is called with `training=False` (its layers
      would never train, so tfmot would never prune them), a dict of
      schedules misses a layer, or a `GlobalAllocation`'s last budget is
      out of reach (its floor and overrides keep more).
  """
  require_functional(model)
  _refuse_frozen_calls(model)
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
  if not isinstance(pruned, PruningModel):
    pruned = PruningModel(inputs=pruned.inputs, outputs=pruned.outputs,
                          name=pruned.name)
  for layer in prunable_layers(pruned):
    if chosen[layer.name] is None:
      layer.measuring.assign(0.0)  # Never pruned: no statistics needed.
  return pruned


def _refuse_frozen_calls(model):
  """Refuses nested models with prunable layers called with training=False.

  `base(x, training=False)` (the fine-tuning idiom that keeps a backbone's
  BatchNormalization in inference mode) runs every layer of `base` in
  inference mode during `fit` too: tfmot's wrapper then never advances its
  pruning step nor updates a mask, and no statistic is measured, so the
  model would end training unpruned.
  """
  for node, layer in graph.topological_nodes(model):
    if not isinstance(layer, keras.Model) or not prunable_layers(layer):
      continue
    if graph.training_argument(node) is False:
      raise ValueError(
          f"Nested model {layer.name!r} in {model.name!r} is called with "
          "training=False, so its PrunableConcatConv layers never run in "
          "training mode: tfmot would never advance their pruning step, "
          "measure their inputs or prune them. Call it without training="
          f"False (`{layer.name}(x)`); to keep BatchNormalization layers in "
          "inference mode while pruning, set `trainable = False` on them "
          "(tfsdn.make_prunable keeps a frozen BatchNormalization frozen "
          "inside the PrunableConcatConv).")
    _refuse_frozen_calls(layer)


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
