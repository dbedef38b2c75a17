"""What one input channel of a prunable layer costs, and dense model costs.

The cost model of `tfsdn.GlobalAllocation` (`tfsdn.allocation`): MACs of a
conv per input channel, the dense model's MACs counted as `model_report`
counts them, and the layer-wise sparsity with the same estimated cost.
"""

from tfsdn.compat import keras
from tfsdn.global_allocation import layer_costs
from tfsdn.global_allocation import least_layerwise_sparsity


def dense_macs(model):
  """MACs per example of `model` with every input channel live.

  Counts Conv2D, Dense and PrunableConcatConv layers (wrapped or not,
  nested models included) as `model_report` does.
  """
  from tfsdn.prunable_concat_conv import PrunableConcatConv  # pylint: disable=g-import-not-at-top
  total = 0
  for layer in _all_layers(model):
    if isinstance(layer, PrunableConcatConv):
      total += layer_costs([layer], "macs")[0] * layer.input_channels
    elif isinstance(layer, keras.layers.Conv2D):
      kh, kw = layer.kernel_size
      height, width = layer.output_shape[1:3]
      total += (kh * kw * int(layer.input_shape[-1]) // layer.groups *
                layer.filters * height * width)
    elif isinstance(layer, keras.layers.Dense):
      total += int(layer.input_shape[-1]) * layer.units
  return int(total)


def _all_layers(model):
  from tfsdn.prune import unwrap  # pylint: disable=g-import-not-at-top
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)
    else:
      yield unwrap(layer)


def dense_cost(model, budget, layers):
  """The dense cost of `model`: its MACs, or with `budget="channels"` the
  input channels of `layers` (the prunable layers a budget covers)."""
  if budget == "channels":
    return sum(layer.input_channels for layer in layers)
  return dense_macs(model)


def layerwise_sparsity(model, keep, budget="macs"):
  """The least per-layer sparsity whose estimated cost is <= `keep`.

  The layer-wise counterpart of a `GlobalAllocation` budget, for comparing
  the two at equal cost (the same estimate: pruned inputs only).

  Args:
    model: A model with `PrunableConcatConv`s (every one is pruned).
    keep: The budget, a fraction of the dense cost in (0, 1].
    budget: `"macs"` or `"channels"`.

  Returns:
    A sparsity in [0, 1), a multiple of 1/1000.

  Raises:
    ValueError: if no sparsity below 1 reaches the budget.
  """
  from tfsdn.prune import prunable_layers  # pylint: disable=g-import-not-at-top
  layers = prunable_layers(model)
  return least_layerwise_sparsity(
      layers, dense_cost(model, budget, layers), keep, budget, model.name)
