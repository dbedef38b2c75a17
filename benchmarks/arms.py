"""The arms of the evidence experiment: how each one prunes (or not).

An arm is named `KIND` or `KIND@KEEP`, where KEEP is a budget, the fraction
of the dense model's MACs the compact model may keep (e.g. `el1_global@0.45`).
Branch arms start from the seed's trunk (the dense model trained up to where
pruning begins) and see the same data order; `narrow_dense` and the
`retrained` arms train a different architecture from scratch for the whole run.

  dense              the trunk trained on, unpruned
  el1_layer          expected_l1, every layer pruned by the same fraction, the
                     least whose estimated MACs fit the budget
  el1_nested         el1_layer with nested selections (UpdateScores(nested=
                     True)): the readers of a producer keep nested sets of
                     its channels, so the strip reads each as one prefix
  el1_global         expected_l1, GlobalAllocation under the MAC budget
  bn_gamma_global    Network Slimming's criterion, GlobalAllocation
  weight_l1_global   CondenseNet's criterion, GlobalAllocation
  random_matched     random channels, the per-layer counts of every stage of
                     el1_global at the same budget and seed
  tfmot_unstructured tfmot's elementwise pruning of the same convolutions to
                     el1_layer's sparsity (its MACs: nonzero weights only)
  narrow_dense       a dense DenseNet with the largest growth rate whose MACs
                     fit the budget, from scratch
  retrained          el1_global's stripped architecture at the same budget
                     and seed, re-initialised and trained from scratch
  retrained_layer    the same for el1_layer's stripped architecture
"""

import math

import numpy as np
import tensorflow_model_optimization as tfmot

import tfsdn
from arm_names import Arm  # noqa: F401  pylint: disable=unused-import
from arm_names import CRITERION  # noqa: F401  pylint: disable=unused-import
from arm_names import FROM_SCRATCH  # noqa: F401  pylint: disable=unused-import
from arm_names import KINDS  # noqa: F401  pylint: disable=unused-import
from arm_names import NEEDS  # noqa: F401  pylint: disable=unused-import
from arm_names import ordered  # noqa: F401  pylint: disable=unused-import
from arm_names import parse  # noqa: F401  pylint: disable=unused-import
from arm_names import stage_epochs
from tfsdn import allocation
from tfsdn import schedule as schedule_lib
from tfsdn.compat import keras


def pruning_schedule(arm, model, config, steps_per_epoch, needed_result):
  """What `prune_dense_connections` gets for `arm` (None: not pruned)."""
  begin, end = stage_epochs(config)
  if arm.kind in ("el1_global", "bn_gamma_global", "weight_l1_global"):
    return tfsdn.GlobalAllocation.evenly(
        arm.keep, config["num_stages"], begin, end,
        steps_per_epoch=steps_per_epoch, floor=config["floor"])
  if arm.kind in ("el1_layer", "el1_nested", "tfmot_unstructured"):
    sparsity = allocation.layerwise_sparsity(model, arm.keep)
    return tfsdn.StagedSparsity.evenly(sparsity, config["num_stages"], begin,
                                       end, steps_per_epoch=steps_per_epoch)
  if arm.kind == "random_matched":
    return matched_schedules(needed_result["stages"])
  return None


def matched_schedules(stages):
  """Per-layer `StagedSparsity` pruning exactly another arm's counts.

  Args:
    stages: A result's `stages`: `[{"step": s, "layers": {name: [pruned,
      scheduled, channels]}}]`.

  Returns:
    A dict from layer name to its schedule.
  """
  per_layer = {}
  for stage in stages:
    for name, (pruned, _, channels) in stage["layers"].items():
      per_layer.setdefault(name, []).append(
          (stage["step"], schedule_lib.sparsity_for_count(channels, pruned)))
  return {name: tfsdn.StagedSparsity(pairs)
          for name, pairs in per_layer.items()}


def narrow_growth_rate(build, keep, growth_rate):
  """The largest growth rate whose dense MACs are <= keep x those at k."""
  target = keep * allocation.dense_macs(build(growth_rate))
  for k in range(growth_rate - 1, 0, -1):
    if allocation.dense_macs(build(k)) <= target:
      return k
  raise ValueError(f"No growth rate >= 1 fits keep={keep}")


def reinitialized(model, seed):
  """A fresh copy of a stock model: same architecture, new initial weights."""
  keras.utils.set_random_seed(seed)
  return keras.models.clone_model(model)


def unstructured(model, sparsity, config, steps_per_epoch):
  """tfmot's elementwise pruning of the convs tfsdn would prune.

  The model is rebuilt from stock layers first; each Conv2D that replaced a
  `PrunableConcatConv` is wrapped with a `PolynomialDecay` from 0 to
  `sparsity` over the branch's stage epochs (reached exactly).
  """
  names = {layer.name for layer in tfsdn.prunable_layers(model)}
  plain = tfsdn.strip_to_compact(model, slice_cost_macs=0, pool_first=False)
  begin_epoch, end_epoch = stage_epochs(config)
  begin = schedule_lib.epoch_step(begin_epoch, steps_per_epoch)
  frequency = max(1, steps_per_epoch // 4)
  end = begin + frequency * max(1, math.ceil(
      (schedule_lib.epoch_step(end_epoch, steps_per_epoch) - begin) /
      frequency))
  polynomial = tfmot.sparsity.keras.PolynomialDecay(
      0.0, sparsity, begin, end, frequency=frequency)

  def wrap(layer):
    if layer.name in names:
      return tfmot.sparsity.keras.prune_low_magnitude(
          layer, pruning_schedule=polynomial)
    return layer

  return keras.models.clone_model(plain, clone_function=wrap)


def zero_weight_macs(model):
  """MACs of the exactly-zero kernel weights of every Conv2D."""
  total = 0
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      height, width = layer.output_shape[1:3]
      total += int(np.sum(layer.kernel.numpy() == 0)) * height * width
  return total
