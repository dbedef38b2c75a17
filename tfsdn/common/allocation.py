"""Global allocation: one ranking across layers, under a budget in MACs.

This module is TensorFlow-free, shared by the tfmot path (`tfsdn.allocation`
runs it inside tfmot's loop) and the Keras 3 path (`tfsdn.keras3`). A layer
here is anything with `name`, `input_channels`, `live_mask()`,
`contribution_score`, `kernel_size`, `filters` and `conv_output_shape`:
both paths' `PrunableConcatConv`s.

`StagedSparsity` gives every layer the same fraction of pruned inputs. A
`GlobalAllocation` instead decides at each stage how many inputs each layer
keeps, from one ranking of all live input channels of all layers, so that
the compact model fits a budget: a fraction of the dense model's MACs
(`budget="macs"`, what a user pays for at inference) or of its prunable
input channels (`budget="channels"`).

What is ranked. A layer's scores are normalised to mean 1 over its live
channels (`criteria.normalize_scores`), so a raw score is not comparable
across layers: its scale depends on the layer's input statistics and kernel.
What is comparable is the *share* of the layer's measured contribution a
channel carries: `score / live_channels` (its normalised score divided by
the sum of the layer's normalised live scores). A channel is then ranked by
its share per unit of cost, `share / cost`, where cost is the MACs one input
channel of that layer costs (`kh * kw * filters * out_h * out_w`; 1 with
`budget="channels"`), and the channels with the lowest share per cost go
first: the choice a fractional knapsack makes when each layer's output
matters equally. A channel of a 32x32 layer costs 16 times one of an 8x8
layer, so at equal shares the larger feature maps lose inputs first.

With `criterion="random"` the scores are fixed draws, not normalised, so
the "share" is a random number too: the allocation is random but still
cost-aware.

The MACs are estimated as the dense model's MACs (every Conv2D, Dense and
PrunableConcatConv, as `model_report` counts them) minus what the pruned
inputs cost. The strip step may remove more (producer filters that nobody
reads any more), so the compact model's MACs are at most the estimate,
and can be well below it (in a DenseNet-B net the bottleneck filter behind
every pruned width input goes too); compare allocations by the compact
model's MACs (`model_report`), not by their budgets.

The allocation runs inside tfmot's loop: every allocated layer gets its own
`AllocatedSparsity` schedule (a tfmot `PruningSchedule`) whose sparsity
`tfsdn.UpdateScores` sets right before each stage, after the scores are
computed; tfmot then prunes exactly that many inputs of that layer.
"""


import fnmatch
import math
import numbers

import numpy as np

from tfsdn.common import checks
from tfsdn.common import stages
from tfsdn.common.stages import FIRST_STAGE_STEP
from tfsdn.common.stages import pruned_count

BUDGETS = ("macs", "channels")


class GlobalAllocation:
  """Stages of a budget, split over layers by one cost-aware ranking.

  Example:

  ```python
  allocation = tfsdn.GlobalAllocation(
      [(2000, 0.7), (4000, 0.45)],        # keep <= 45% of the dense MACs
      floor=0.1, ignored_layers=["block1_layer1"],
      overrides={"transition*": 0.25})
  pruned = tfsdn.prune_dense_connections(model, allocation)
  ```

  Args:
    stages: `(step, keep)` pairs: at `step` (an integer >= 2, strictly
      increasing, at least `steps_per_execution` apart: the budget of a
      stage is split right before the training call that contains it) the
      model is pruned until its estimated cost is at most `keep` times the
      dense model's (`keep` in (0, 1], non-increasing).
    budget: `"macs"` (the compact model's multiply-accumulates) or
      `"channels"` (prunable input channels).
    floor: Every allocated layer keeps at least `max(1, ceil(floor * C))`
      of its C inputs, in [0, 1).
    ignored_layers: Names or `fnmatch` patterns (`"block1_*"` for a block)
      of prunable layers that are not pruned at all. Each must match some
      prunable layer (checked by `prune_dense_connections`).
    overrides: Dict from a name or pattern to a sparsity in [0, 1): those
      layers are pruned layer-wise to that sparsity (reached at the last
      stage, in proportion before it) and not ranked; their cost counts in
      the budget. The first matching pattern wins; each must match some
      prunable layer.

  Raises:
    ValueError: for a malformed stage, budget, floor or override; the
      message quotes it.
  """

  def __init__(self, stages, budget="macs", floor=0.1, ignored_layers=(),
               overrides=None):
    if budget not in BUDGETS:
      raise ValueError(
          f"budget must be one of {BUDGETS}. Received: budget={budget!r}")
    pairs = _stage_pairs(stages)
    for step, keep in pairs:
      checks.real("keep", keep, 0.0, 1.0, low_open=True)
      checks.integer("stage step", step, low=FIRST_STAGE_STEP)
    for (before_step, before), (step, keep) in zip(pairs, pairs[1:]):
      if keep > before:
        raise ValueError(
            f"Stage budgets must be non-increasing. Received: keep={keep} at "
            f"step {step} after keep={before} in stages={stages!r}")
      if step <= before_step:
        raise ValueError(
            f"Stage steps must be strictly increasing. Received: step {step} "
            f"after step {before_step} in stages={stages!r}")
    pairs = [(int(step), keep) for step, keep in pairs]
    self.stages = pairs
    self.budget = budget
    self.floor = checks.real("floor", floor, 0.0, 1.0, high_open=True)
    if ignored_layers is None:
      ignored_layers = ()
    if isinstance(ignored_layers, str) or not isinstance(
        ignored_layers, (list, tuple)) or not all(
            isinstance(p, str) for p in ignored_layers):
      raise ValueError("ignored_layers must be a list of layer names or "
                       f"patterns. Received: ignored_layers={ignored_layers!r}")
    self.ignored_layers = list(ignored_layers)
    overrides = dict(overrides or {})
    for pattern, sparsity in overrides.items():
      if not isinstance(pattern, str):
        raise ValueError(f"overrides keys must be layer names or patterns. "
                         f"Received: {pattern!r}")
      checks.real(f"overrides[{pattern!r}]", sparsity, 0.0, 1.0,
                  high_open=True)
    self.overrides = {k: float(v) for k, v in overrides.items()}

  @classmethod
  def evenly(cls, final_keep, num_stages, begin_step, end_step,
             steps_per_epoch=None, **kwargs):
    """Stages evenly spaced as `StagedSparsity.evenly`, budgets linear.

    Stage i of n keeps `1 - (1 - final_keep) * i / n` of the dense cost.

    Args:
      final_keep: Budget after the last stage, in (0, 1).
      num_stages: Number of stages.
      begin_step: Step (or epoch, with `steps_per_epoch`) of the first stage.
      end_step: Step (or epoch) of the last stage.
      steps_per_epoch: If given, begin/end count epochs (`epoch_step`).
      **kwargs: `budget`, `floor`, `ignored_layers`, `overrides`.

    Returns:
      A `GlobalAllocation`.
    """
    checks.real("final_keep", final_keep, 0.0, 1.0, low_open=True,
                high_open=True)
    staged = stages.evenly_stages(1.0 - final_keep, num_stages, begin_step,
                                  end_step, steps_per_epoch=steps_per_epoch)
    return cls([(step, 1.0 - sparsity) for step, sparsity in staged],
               **kwargs)

  @property
  def stage_steps(self):
    return [step for step, _ in self.stages]

  def is_ignored(self, name):
    return any(fnmatch.fnmatchcase(name, p) for p in self.ignored_layers)

  def override(self, name):
    """The overriding sparsity of layer `name`, or None."""
    for pattern, sparsity in self.overrides.items():
      if fnmatch.fnmatchcase(name, pattern):
        return sparsity
    return None

  def keep_at(self, step):
    """The budget in force after `step` (1.0 before the first stage)."""
    keep = 1.0
    for stage_step, stage_keep in self.stages:
      if stage_step <= step:
        keep = stage_keep
    return keep

  def plan(self, layers, costs, dense_cost, step, protected=None,
           compact_cost=None):
    """Live inputs each layer keeps after the stage at `step`.

    The channels are taken in the order of the ranking (lowest share per
    cost first) until the budget is met. Without `compact_cost` the cost is
    estimated from the pruned inputs alone; with it, each candidate cut is
    priced by what the compact model would really cost (the filters that no
    one reads any more go too), and the fewest channels that meet the
    budget are taken, so the compact model lands at the budget, not below.

    Args:
      layers: The allocated `PrunableConcatConv`s (ignored ones excluded),
        with their scores computed for this stage.
      costs: Per layer, the cost of one of its input channels.
      dense_cost: The dense model's cost: all its MACs (ignored and
        non-prunable layers included), or with `budget="channels"` the input
        channels of the allocated layers.
      step: The stage step.
      protected: None, or per layer None or a boolean vector over its
        inputs: channels that must stay live (they carry the filters of an
        ignored layer).
      compact_cost: None, or a function from a dict `{layer name: boolean
        vector of the inputs it would read}` (every allocated layer) to the
        compact model's cost in the budget's unit.

    Returns:
      A list of kept counts, one per layer.

    Raises:
      ValueError: if the floor and overrides make the budget unreachable.
    """
    keep_fraction = self.keep_at(step)
    final_keep = self.stages[-1][1]
    progress = (1.0 if final_keep >= 1.0 else
                min(1.0, (1.0 - keep_fraction) / (1.0 - final_keep)))
    protected = list(protected) if protected is not None else [None] * len(
        layers)
    channels = [layer.input_channels for layer in layers]
    live_masks = [np.asarray(layer.live_mask(), bool) for layer in layers]
    live = [int(np.sum(mask)) for mask in live_masks]
    scores = [np.asarray(layer.contribution_score.numpy()) for layer in layers]
    # Per layer, its live channels that may go, lowest score first.
    removable_order = []
    for i, mask in enumerate(live_masks):
      free = mask if protected[i] is None else mask & ~np.asarray(
          protected[i], bool)
      indices = np.flatnonzero(free)
      removable_order.append(indices[np.argsort(scores[i][indices],
                                                kind="stable")])
    prunable_cost = sum(c * n for c, n in zip(costs, channels))
    fixed = dense_cost - prunable_cost
    keep = []
    for i, (layer, n, alive) in enumerate(zip(layers, channels, live)):
      sparsity = self.override(layer.name)
      if sparsity is None:
        keep.append(alive)
      else:
        floor = alive - len(removable_order[i])  # The protected ones.
        keep.append(max(floor, min(alive, n - pruned_count(n, sparsity *
                                                           progress))))
    target = keep_fraction * dense_cost
    candidates = []  # (priority, layer index, rank within the layer)
    for i, layer in enumerate(layers):
      if self.override(layer.name) is not None:
        continue
      removable = min(len(removable_order[i]),
                      live[i] - max(1, math.ceil(self.floor * channels[i])))
      if removable <= 0:
        continue
      share = scores[i][removable_order[i][:removable]] / live[i]
      candidates.append(np.stack(
          [share / costs[i], np.full(removable, i), np.arange(removable)], 1))
    if candidates:
      candidates = np.concatenate(candidates)
      order = np.lexsort((candidates[:, 2], candidates[:, 1], candidates[:, 0]))
      candidates = candidates[order]
    else:
      candidates = np.zeros((0, 3))

    def kept_after(taken):
      counts = list(keep)
      for i in candidates[:taken, 1]:
        counts[int(i)] -= 1
      return counts

    if compact_cost is None:
      excess = fixed + sum(c * k for c, k in zip(costs, keep)) - target
      if excess <= 0:
        return keep
      saved = np.cumsum([costs[int(i)] for i in candidates[:, 1]])
      taken = int(np.searchsorted(saved, excess)) + 1
      if taken > len(candidates):
        raise ValueError(self._unreachable(
            step, target, dense_cost,
            excess - (saved[-1] if len(saved) else 0)))
      return kept_after(taken)

    def cost_after(taken):
      masks = {}
      for i, (layer, kept) in enumerate(zip(layers, kept_after(taken))):
        mask = live_masks[i].copy()
        mask[removable_order[i][:live[i] - kept]] = False
        masks[layer.name] = mask
      return compact_cost(masks)

    low, high = 0, len(candidates)  # Fewest taken that meet the budget.
    least = cost_after(high)
    if least > target:
      raise ValueError(self._unreachable(step, target, dense_cost,
                                         least - target))
    while low < high:
      middle = (low + high) // 2
      if cost_after(middle) <= target:
        high = middle
      else:
        low = middle + 1
    return kept_after(low)

  def _unreachable(self, step, target, dense_cost, left):
    return (
        f"GlobalAllocation: the stage at step {step} cannot reach keep="
        f"{self.keep_at(step)} of the dense {self.budget} ({target:,.0f} of "
        f"{dense_cost:,.0f}): with floor={self.floor}, ignored_layers="
        f"{self.ignored_layers} and overrides={self.overrides} at least "
        f"{target + left:,.0f} remain. Lower the floor or the overrides' "
        "sparsities, ignore fewer layers, or raise the budget.")

  def get_config(self):
    return {"stages": [list(s) for s in self.stages], "budget": self.budget,
            "floor": self.floor, "ignored_layers": list(self.ignored_layers),
            "overrides": dict(self.overrides)}

  @classmethod
  def from_config(cls, config):
    return cls(**config)

  def __eq__(self, other):
    return (isinstance(other, GlobalAllocation) and
            self.get_config() == other.get_config())

  def __hash__(self):
    return hash(repr(self.get_config()))

  def __repr__(self):
    return f"GlobalAllocation(**{self.get_config()!r})"


def raise_protected(scores, protected):
  """`scores` with the live `protected` ones above every other, distinct.

  tfmot prunes a layer's lowest scores; a channel that must stay live (it
  carries an ignored layer's filter) is given a score above the layer's
  largest, so the stage keeps it. Pruned scores (0) stay 0.
  """
  scores = np.array(scores, dtype=np.float32)
  raised = np.flatnonzero(np.asarray(protected, bool) & (scores > 0))
  if len(raised):
    top = max(float(scores.max()), 1.0)
    scores[raised] = top * (2.0 + np.arange(len(raised)) / len(raised))
  return scores


def layer_costs(layers, budget):
  """Cost of one input channel of each layer: MACs, or 1 per channel."""
  if budget == "channels":
    return [1] * len(layers)
  costs = []
  for layer in layers:
    height, width = layer.conv_output_shape[1:3]
    if height is None or width is None:
      raise ValueError(
          f"Layer {layer.name!r} has an unknown output size "
          f"{layer.conv_output_shape}: a MAC budget needs a model built for a "
          "fixed input size (or use budget='channels').")
    kh, kw = layer.kernel_size
    costs.append(int(kh * kw * layer.filters * height * width))
  return costs


def check_reachable(allocation, layers, all_layers, costs, total, model_name):
  """Fails early if a pattern matches nothing or a budget is out of reach.

  Every stage's budget is checked against what the floor and the overrides
  (in their proportion at that stage) leave at least.

  Args:
    allocation: A `GlobalAllocation`.
    layers: The `PrunableConcatConv`s it allocates (ignored ones excluded).
    all_layers: All the model's `PrunableConcatConv`s.
    costs: Per allocated layer, the cost of one input channel
      (`layer_costs`).
    total: The dense cost the budget is a fraction of.
    model_name: The model's name, for the messages.

  Raises:
    ValueError: naming the unmatched patterns, or the stage, its budget and
      the least cost reachable.
  """
  for kind, patterns in (("ignored_layers", allocation.ignored_layers),
                         ("overrides", list(allocation.overrides))):
    names = [layer.name for layer in all_layers]
    unused = [p for p in patterns
              if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unused:
      raise ValueError(
          f"GlobalAllocation {kind} {unused} match no prunable layer of "
          f"model {model_name!r} (its prunable layers: {names[:6]}...).")
  final_keep = allocation.stages[-1][1]
  for step, keep in allocation.stages:
    progress = (1.0 if final_keep >= 1.0 else
                min(1.0, (1.0 - keep) / (1.0 - final_keep)))
    least = total
    for layer, cost in zip(layers, costs):
      n = layer.input_channels
      sparsity = allocation.override(layer.name)
      kept = (max(1, math.ceil(allocation.floor * n)) if sparsity is None
              else n - pruned_count(n, sparsity * progress))
      least -= cost * (n - kept)
    if least > keep * total:
      raise ValueError(allocation._unreachable(  # pylint: disable=protected-access
          step, keep * total, total, least - keep * total))


def _stage_pairs(stages):
  if not isinstance(stages, (list, tuple)) or not stages:
    raise ValueError("stages must be a non-empty list of (step, keep) pairs. "
                     f"Received: stages={stages!r}")
  pairs = []
  for stage in stages:
    if not isinstance(stage, (list, tuple)) or len(stage) != 2 or not (
        isinstance(stage[1], numbers.Real)) or isinstance(stage[1], bool):
      raise ValueError(
          f"Each stage must be a (step, keep) pair. Received: {stage!r}")
    pairs.append((stage[0], float(stage[1])))
  return pairs


def least_layerwise_sparsity(layers, total, keep, budget, model_name):
  """The least per-layer sparsity (a multiple of 1/1000) whose estimated
  cost is <= `keep` x `total`: the layer-wise counterpart of a budget.

  Args:
    layers: The prunable layers (every one is pruned).
    total: The dense cost (`budget`'s unit).
    keep: The budget, a fraction of `total` in (0, 1].
    budget: `"macs"` or `"channels"`.
    model_name: For the message.

  Raises:
    ValueError: if no sparsity below 1 reaches the budget.
  """
  checks.real("keep", keep, 0.0, 1.0, low_open=True)
  costs = layer_costs(layers, budget)
  for milli in range(0, 1000):
    sparsity = milli / 1000
    cost = total - sum(c * pruned_count(l.input_channels, sparsity)
                       for c, l in zip(costs, layers))
    if cost <= keep * total:
      return sparsity
  raise ValueError(f"No per-layer sparsity below 1 reaches keep={keep} of "
                   f"the dense {budget} of model {model_name!r}.")
