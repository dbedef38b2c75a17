"""Nested selections: the readers of one producer keep nested channel sets.

In a DenseNet every layer reads every earlier feature map, so a producer's
channels (a conv's filters, a block's input) are read by many layers, and
each prunes its own subset. The strip step orders each producer's filters
so that what its readers keep is few contiguous ranges (`channel_order`),
but unrelated subsets still cost many slices, and a slice is an op that
LiteRT and TensorFlow run one at a time. If the kept sets of all readers of
a producer are nested (each one a subset or a superset of every other), one
filter order turns every one of them into a prefix: one slice per reader.

`nest_scores` makes the next stage keep nested sets without changing how
many channels each layer keeps: within each producer, a layer's live
scores are handed out again, largest first, in one order shared by all
readers of that producer. The shared order ranks a channel first by how
many readers still keep it (so what is kept now stays nested), then by the
sum of its scores over the readers. A layer's scores within a producer
are only permuted, so each stage prunes exactly as many channels as
scheduled, and how many channels a layer keeps from each producer is
still its own criterion's choice; which of them it keeps is the readers'
common choice. Used by `tfsdn.UpdateScores(nested=True)`.

This assumes each reader reads a producer whole (as DenseNet layers read
every earlier feature map); a reader of part of a producer's channels
still prunes exactly what is scheduled, but its set may not nest.
"""

import numpy as np

from tfsdn import graph
from tfsdn.compat import keras
from tfsdn.prunable_concat_conv import PrunableConcatConv
from tfsdn.prunable_concat_conv import prunable_layers
from tfsdn.prunable_concat_conv import unwrap


def shared_orders(readers):
  """The order of each producer's channels that all its readers share.

  Args:
    readers: A list of `(sources, scores)` pairs, one per layer:
      `sources[i]` is the `(producer, channel)` pair of input channel i,
      `scores` the layer's non-negative scores (0: pruned).

  Returns:
    A dict from producer to a dict from channel to its rank (0 first):
    channels kept by more readers first, then by the larger sum of scores,
    then by the lower channel index.
  """
  kept, total = {}, {}
  for sources, scores in readers:
    for source, score in zip(sources, np.asarray(scores, np.float64)):
      kept[source] = kept.get(source, 0) + int(score > 0)
      total[source] = total.get(source, 0.0) + float(score)
  by_producer = {}
  for producer, channel in kept:
    by_producer.setdefault(producer, []).append(channel)
  orders = {}
  for producer, channels in by_producer.items():
    ranked = sorted(channels, key=lambda c, p=producer: (
        -kept[(p, c)], -total[(p, c)], c))
    orders[producer] = {channel: rank for rank, channel in enumerate(ranked)}
  return orders


def nested_scores(sources, scores, orders):
  """A layer's scores handed out again in the producers' shared orders.

  Within each producer, the live scores of the layer, largest first, go to
  its live input channels in the order `orders` gives (two input channels
  from the same producer channel keep their input order). Pruned channels
  stay 0, and the layer's set of score values is unchanged.

  Args:
    sources: `(producer, channel)` per input channel of the layer.
    scores: The layer's scores, a vector as long as `sources`.
    orders: `shared_orders` of all readers.

  Returns:
    A new float32 vector of scores.
  """
  scores = np.asarray(scores, np.float32)
  result = scores.copy()
  positions = {}
  for position, (producer, _) in enumerate(sources):
    positions.setdefault(producer, []).append(position)
  for producer, where in positions.items():
    live = [p for p in where if scores[p] > 0]
    live.sort(key=lambda p, o=orders[producer]: (o[sources[p][1]], p))
    result[live] = np.sort(scores[live])[::-1]
  return result


def readers_of(model):
  """Each `PrunableConcatConv` of a functional model with its sources.

  Args:
    model: A functional tf_keras model, wrapped by tfmot or not.

  Returns:
    A list of `(layer, sources)` pairs in topological order, `sources` as in
    `shared_orders`.

  Raises:
    ValueError: if a `PrunableConcatConv` sits in a nested model, where the
      producers of its inputs are not visible.
  """
  sources = graph.channel_sources(model)
  found = []
  for node, layer in graph.topological_nodes(model):
    layer = unwrap(layer)
    if isinstance(layer, PrunableConcatConv):
      found.append((layer, [s for t in graph.node_inputs(node)
                            for s in sources[id(t)]]))
    elif isinstance(layer, keras.Model) and prunable_layers(layer):
      raise ValueError(
          f"Nested selections need the PrunableConcatConv layers in the "
          f"model's own graph; {layer.name!r} in {model.name!r} is a nested "
          "model that holds some. Flatten it first (tfsdn.make_prunable "
          "does).")
  return found


def nest_scores(readers, layers):
  """Hands out the scores of `layers` again so the next stage keeps nested sets.

  Args:
    readers: `readers_of(model)`.
    layers: The `PrunableConcatConv` layers whose scores may change (those
      pruned at the coming stage); the others only count in the shared
      orders.

  Returns:
    The names of the layers whose scores changed.
  """
  current = [(sources, layer.contribution_score.numpy())
             for layer, sources in readers]
  orders = shared_orders(current)
  targets = {id(layer) for layer in layers}
  changed = []
  for (layer, sources), (_, scores) in zip(readers, current):
    if id(layer) not in targets:
      continue
    new = nested_scores(sources, scores, orders)
    if not np.array_equal(new, scores):
      layer.contribution_score.assign(new)
      changed.append(layer.name)
  return changed
