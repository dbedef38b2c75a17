"""The pruned and dense DenseNets the speed benchmarks compare.

Shared by `deploy_speed.py` and `tf_op_profile.py`: a trained pruned model
(`final_model.keras` of examples/train_cifar.py) or a DenseNet pruned to a
synthetic pattern, and the same network with every input channel live.
"""

import numpy as np

import tfsdn
from tfsdn import testing
from tfsdn.compat import keras

PATTERNS = ("random", "prefixes")


def pruned_and_dense(pruned_model=None, depth=40, growth_rate=12,
                     sparsity=0.5, pattern="random", seed=0):
  """(pruned model, same network with every channel live, patterns).

  Args:
    pruned_model: A pruned model's `.keras` file; None: a DenseNet of
      `depth` and `growth_rate`, pruned to `sparsity` by `pattern`.
    depth: DenseNet depth (without `pruned_model`).
    growth_rate: Growth rate (without `pruned_model`).
    sparsity: Sparsity of every layer (without `pruned_model`).
    pattern: `"random"` (`testing.prune_at_random`, seeded by `seed`) or
      `"prefixes"` (`testing.prune_to_prefixes`: each layer reads the first
      1 - `sparsity` of every producer, the best case for slices).
    seed: Seed of the random pattern.

  Returns:
    (pruned, dense, patterns): `patterns` says where the pruning came from.

  Raises:
    ValueError: `pattern` is not one of `PATTERNS`.
  """
  if pattern not in PATTERNS:
    raise ValueError(f"pattern must be one of {PATTERNS}. Received: "
                     f"{pattern!r}")
  if pruned_model:
    pruned = keras.models.load_model(pruned_model)
    dense = keras.models.load_model(pruned_model)
    patterns = f"trained: {pruned_model}"
  else:
    pruned = tfsdn.densenet.DenseNet(depth, growth_rate)
    if pattern == "prefixes":
      testing.prune_to_prefixes(pruned, sparsity)
      patterns = f"prefixes (prune_to_prefixes, sparsity {sparsity})"
    else:
      testing.prune_at_random(pruned, sparsity, seed)
      patterns = f"random (prune_at_random, sparsity {sparsity})"
    dense = tfsdn.densenet.DenseNet(depth, growth_rate)
    dense.set_weights(pruned.get_weights())
  for layer in tfsdn.prunable_layers(dense):
    layer.contribution_score.assign(np.ones(layer.input_channels, "float32"))
  return pruned, dense, patterns
