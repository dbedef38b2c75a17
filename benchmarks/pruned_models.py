"""The pruned and dense DenseNets the speed benchmarks compare.

Shared by `deploy_speed.py` and `inference_speed.py`:
a trained pruned model (`final_model.keras` of examples/train_cifar.py) or
a DenseNet pruned to a synthetic pattern, the same network with every
input channel live, and the flags that choose them and how both are
stripped.
"""

from absl import flags
import numpy as np

import tfsdn
from tfsdn import testing
from tfsdn.compat import keras

PATTERNS = ("random", "prefixes")


def define_flags():
  """Defines the flags of `from_flags` (call once, at a script's top level).

  --pruned_model, --depth, --growth_rate, --sparsity and --pattern; the
  script defines --seed (it may seed more than the pattern).
  """
  flags.DEFINE_string("pruned_model", None,
                      "A pruned model (.keras), e.g. a final_model.keras of "
                      "examples/train_cifar.py; default: --pattern.")
  flags.DEFINE_integer("depth", 40,
                       "DenseNet depth (without --pruned_model).")
  flags.DEFINE_integer("growth_rate", 12,
                       "Growth rate (without --pruned_model).")
  flags.DEFINE_float("sparsity", 0.5,
                     "Sparsity of every layer, in [0, 1) (without "
                     "--pruned_model).")
  flags.register_validator("sparsity", lambda value: 0 <= value < 1,
                           message="--sparsity must be in [0, 1)")
  flags.DEFINE_enum("pattern", "random", list(PATTERNS),
                    "Without --pruned_model: random (prune_at_random, every "
                    "layer at --sparsity) or prefixes (prune_to_prefixes: "
                    "each layer reads its newest input whole and the first "
                    "1 - --sparsity of every other producer, the best case "
                    "for slices).")


def define_strip_flags():
  """Defines the flags of `strip_options` (call once, at top level).

  Not in a process that imports deploy_speed.py, whose --reuse_concats and
  --pool_first add variants instead.
  """
  flags.DEFINE_bool("reuse_concats", False,
                    "Strip both models with running concatenations "
                    "(`tfsdn.strip(..., reuse_concats=True)`).")
  flags.DEFINE_bool("fused_batch_norm", True,
                    "Strip both models with fused BatchNormalizations; "
                    "--nofused_batch_norm: a multiply and an add, faster in "
                    "TF plain on CPU (`tfsdn.strip(..., "
                    "fused_batch_norm=False)`).")
  flags.DEFINE_bool("pool_first", False,
                    "Strip both models with transitions that pool before "
                    "their 1x1 convolution (`tfsdn.strip(..., "
                    "pool_first=True)`).")


def strip_options():
  """The `tfsdn.strip` arguments of `define_strip_flags`' flags."""
  values = flags.FLAGS
  return {"slice_cost_macs": 0,  # Exact reads, as the figures were made.
          "reuse_concats": values.reuse_concats,
          "fused_batch_norm": values.fused_batch_norm,
          "pool_first": values.pool_first}


def from_flags():
  """`pruned_and_dense` of the flags `define_flags` defines (and --seed)."""
  values = flags.FLAGS
  return pruned_and_dense(values.pruned_model, values.depth,
                          values.growth_rate, values.sparsity, values.pattern,
                          values.seed)


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
      `"prefixes"` (`testing.prune_to_prefixes`: each layer reads its newest
      input whole and the first 1 - `sparsity` of every other producer, the
      best case for slices).
    seed: Seed of the random pattern.

  Returns:
    (pruned, dense, patterns): `patterns` says where the pruning came from
    (the file, or the pattern with the network, sparsity and seed).

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
      patterns = (f"prefixes (prune_to_prefixes, DenseNet-{depth}, "
                  f"k={growth_rate}, sparsity {sparsity})")
    else:
      testing.prune_at_random(pruned, sparsity, seed)
      patterns = (f"random (prune_at_random, DenseNet-{depth}, "
                  f"k={growth_rate}, sparsity {sparsity}, seed {seed})")
    dense = tfsdn.densenet.DenseNet(depth, growth_rate)
    dense.set_weights(pruned.get_weights())
  for layer in tfsdn.prunable_layers(dense):
    layer.contribution_score.assign(np.ones(layer.input_channels, "float32"))
  return pruned, dense, patterns
