"""Global allocation inside tfmot's loop.

The allocation itself (what is ranked, the budget, the MAC estimate) is
TensorFlow-free and documented in `tfsdn.common.allocation`; the Keras 3
path uses it too. Here every allocated layer gets its own
`AllocatedSparsity` schedule (a tfmot `PruningSchedule`) whose sparsity
`tfsdn.UpdateScores` sets right before each stage (`allocate`), after the
scores are computed; tfmot then prunes exactly that many inputs of that
layer.
"""


import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfsdn.common import checks
from tfsdn import costs
from tfsdn.common import allocation as global_allocation
from tfsdn.common import liveness
from tfsdn.compat import keras
from tfsdn.costs import channel_graph
from tfsdn.costs import dense_cost
from tfsdn.costs import layer_costs
from tfsdn.prunable_concat_conv import prunable_layers
from tfsdn.schedule import sparsity_for_count

BUDGETS = global_allocation.BUDGETS

# The allocation itself is TensorFlow-free (shared with the Keras 3 path);
# registered here so that tf_keras can serialise it inside a schedule.
GlobalAllocation = keras.utils.register_keras_serializable(package="tfsdn")(
    global_allocation.GlobalAllocation)

# The cost model lives in tfsdn.costs; these are part of this module's API.
dense_macs = costs.dense_macs
layerwise_sparsity = costs.layerwise_sparsity


@keras.utils.register_keras_serializable(package="tfsdn")
class AllocatedSparsity(tfmot.sparsity.keras.PruningSchedule, tf.Module):  # pylint: disable=abstract-method
  """One layer's schedule under a `GlobalAllocation`.

  Prunes at the allocation's stage steps, to the sparsity held in the
  variable `sparsity`, which `tfsdn.UpdateScores` sets before each stage
  (through `allocate`). The variable is tracked by the tfmot wrapper that
  holds this schedule, so checkpoints (`BackupAndRestore`) save and restore
  it, and `get_config` records its value for `model.save`.

  Args:
    allocation: The `GlobalAllocation` (or its config dict).
    sparsity: The sparsity allocated so far.
  """

  def __init__(self, allocation, sparsity=0.0):
    tf.Module.__init__(self, name="allocated_sparsity")
    if isinstance(allocation, dict):
      allocation = GlobalAllocation.from_config(allocation)
    if not isinstance(allocation, GlobalAllocation):
      raise TypeError("allocation must be a tfsdn.GlobalAllocation. "
                      f"Received: {allocation!r}")
    self.allocation = allocation
    self.sparsity = tf.Variable(
        checks.real("sparsity", sparsity, 0.0, 1.0, high_open=True),
        trainable=False, dtype=tf.float32, name="sparsity")

  @property
  def stage_steps(self):
    return self.allocation.stage_steps

  def current_sparsity(self):
    return float(self.sparsity.numpy())

  def __call__(self, step):
    steps = tf.constant(self.stage_steps, dtype=tf.int64)
    should_prune = tf.reduce_any(tf.equal(steps, tf.cast(step, tf.int64)))
    return should_prune, tf.identity(self.sparsity)

  def get_config(self):
    return {
        "class_name": keras.utils.get_registered_name(self.__class__),
        "config": {"allocation": self.allocation.get_config(),
                   "sparsity": self.current_sparsity()},
    }

  @classmethod
  def from_config(cls, config):
    if "config" in config:
      config = config["config"]
    return cls(**config)


def allocate(model, wrappers, step):
  """Sets the sparsity of every wrapper's `AllocatedSparsity` for `step`.

  Called by `tfsdn.UpdateScores` right before the stage, after the scores
  are computed. `wrappers` are the tfmot wrappers of one allocation. Under
  a MAC budget the plan prices each cut by the compact model's MACs
  (`tfsdn.costs.compact_macs`: filters no one reads any more go too), and
  the channels that carry an ignored layer's filters stay live: their
  scores are raised above the layer's others, so tfmot keeps them.

  Args:
    model: The model being trained.
    wrappers: The wrappers whose schedules share one `GlobalAllocation`.
    step: The stage step.

  Returns:
    Dict from layer name to the number of inputs it keeps.
  """
  allocation = wrappers[0].pruning_schedule.allocation
  layers = [wrapper.layer for wrapper in wrappers]
  costs = layer_costs(layers, allocation.budget)
  total = dense_cost(model, allocation.budget, layers)
  nodes, outputs = channel_graph(model)
  protected = protected_inputs(nodes, layers, allocation)
  compact_cost = None
  if allocation.budget == "macs":
    current = {layer.name: layer.live_mask()
               for layer in prunable_layers(model)}
    compact_cost = lambda masks: liveness.compact_macs(
        nodes, outputs, {**current, **masks})
  keep = allocation.plan(layers, costs, total, step, protected, compact_cost)
  for wrapper, layer, kept, mask in zip(wrappers, layers, keep, protected):
    wrapper.pruning_schedule.sparsity.assign(
        sparsity_for_count(layer.input_channels,
                           layer.input_channels - kept))
    if mask is not None:
      layer.contribution_score.assign(
          global_allocation.raise_protected(
              layer.contribution_score.numpy(), mask))
  return {layer.name: kept for layer, kept in zip(layers, keep)}


def protected_inputs(nodes, layers, allocation):
  """Per layer, None or the input channels that carry an ignored layer's
  filters (`tfsdn.common.liveness` nodes of the model)."""
  if not allocation.ignored_layers:
    return [None] * len(layers)
  result = []
  for layer in layers:
    mask = np.array([allocation.is_ignored(producer) for producer, _ in
                     liveness.producers_of_channels(nodes, layer.name)])
    result.append(mask if mask.any() else None)
  return result


def check_reachable(model, allocation, layers, all_layers):
  """Fails early if a pattern matches nothing or a budget is out of reach.

  See `tfsdn.common.allocation.check_reachable`; `model` is the model (dense
  or wrapped) whose dense cost the budget is a fraction of.
  """
  global_allocation.check_reachable(
      allocation, layers, all_layers,
      layer_costs(layers, allocation.budget),
      dense_cost(model, allocation.budget, layers), model.name)
