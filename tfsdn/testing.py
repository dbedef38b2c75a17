"""Helpers for tfsdn's tests and benchmarks; not part of the public API."""

import numpy as np

from tfsdn.common import checks
from tfsdn import graph
from tfsdn.prunable_concat_conv import PrunableConcatConv
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


def prune_to_prefixes(model, sparsity):
  """Prunes every layer to prefixes of its producers: the best case of slices.

  Each `PrunableConcatConv` keeps every channel of the producer of its last
  input channels (its newest input) and the first `C - pruned_count(C,
  sparsity)` channels of every other producer of C channels (a block's
  input, an earlier layer). So every filter is still read by some layer,
  and every layer reads each producer as one prefix: the strip step needs
  at most one slice per producer, shared by its readers. A synthetic
  pattern for speed benchmarks: how fast a compact model could be if the
  criterion were constrained to prefixes; no training chose it.

  Args:
    model: A functional model with `PrunableConcatConv` layers, not
      wrapped by tfmot.
    sparsity: Fraction of each older producer's channels to prune, in
      [0, 1).

  Raises:
    ValueError: if `sparsity` is outside [0, 1), or the model has no
      `PrunableConcatConv`.
  """
  checks.real("sparsity", sparsity, 0.0, 1.0, high_open=True)
  sources = graph.channel_sources(model)
  nodes = graph.topological_nodes(model)
  widths = {layer.name: graph.channels(graph.node_output(node))
            for node, layer in nodes
            if graph.node_output(node).shape.rank == 4}
  layers = [(node, layer) for node, layer in nodes
            if isinstance(layer, PrunableConcatConv)]
  if not layers:
    raise ValueError(f"Model {model.name!r} has no PrunableConcatConv layer "
                     "to prune.")
  for node, layer in layers:
    channels = [s for t in graph.node_inputs(node) for s in sources[id(t)]]
    newest = channels[-1][0]
    layer.contribution_score.assign(np.array(
        [name == newest or
         channel < widths[name] - pruned_count(widths[name], sparsity)
         for name, channel in channels], "float32"))
