"""Helpers for tfsdn's tests and benchmarks; not part of the public API."""

import numpy as np

from tfsdn import checks
from tfsdn.prune import prunable_layers
from tfsdn.schedule import pruned_count


def prune_at_random(model, sparsity, seed=0, layers=None):
  """Prunes `pruned_count(C, sparsity)` random input channels of every layer.

  The count follows the same rounding rule as a stage of that sparsity.

  Sets the contribution scores of every `PrunableConcatConv` directly, with
  no training: for speed benchmarks and tests of the strip step, where which
  channels go does not matter.

  Args:
    model: A model with `PrunableConcatConv` layers (wrapped or not).
    sparsity: Fraction of input channels to prune per layer, in [0, 1).
    seed: Seed of the random choice.
    layers: Names of the layers to prune; None prunes every one. The
      others are left as they are.

  Raises:
    ValueError: if `sparsity` is outside [0, 1).
  """
  checks.real("sparsity", sparsity, 0.0, 1.0, high_open=True)
  rng = np.random.default_rng(seed)
  for layer in prunable_layers(model):
    if layers is not None and layer.name not in layers:
      continue
    scores = rng.uniform(0.1, 1.0, layer.input_channels)
    scores[rng.permutation(layer.input_channels)[
        :pruned_count(layer.input_channels, sparsity)]] = 0
    layer.contribution_score.assign(scores)
