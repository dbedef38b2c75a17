"""Filter orders under which consumers read few contiguous channel ranges.

Plain numpy, shared by the tfmot path's strip (`tfsdn.layout`) and the
Keras 3 path's (`tfsdn.keras3`). Runtimes copy a contiguous range of
channels cheaply (a slice) but not an arbitrary subset, so the strip step
orders each producer's filters so that what each consumer reads is few
ranges, ideally one prefix, and only the filters of producers whose order
no model output shows (`reorderable`).
"""

import numpy as np


def runs(positions):
  """Maximal ranges of consecutive integers in a sorted vector.

  Args:
    positions: Sorted, distinct integers.

  Returns:
    A list of `(start, stop)` pairs, `stop` exclusive.
  """
  positions = np.asarray(positions, int)
  if not len(positions):
    return []
  breaks = np.flatnonzero(np.diff(positions) != 1) + 1
  starts = np.concatenate([[0], breaks])
  stops = np.concatenate([breaks, [len(positions)]])
  return [(int(positions[a]), int(positions[b - 1]) + 1)
          for a, b in zip(starts, stops)]


def positions(ranges):
  """The positions `(start, stop)` ranges cover, in order (inverse of `runs`)."""
  return np.concatenate([np.arange(start, stop, dtype=int)
                         for start, stop in ranges] or [np.zeros(0, int)])


def merge_runs(ranges, length, max_gap):
  """Ranges joined across gaps of at most `max_gap` channels.

  A consumer may read the channels between two ranges it needs and multiply
  them by zero kernel rows: one slice fewer for a few more MACs. When the
  channels left out of the merged ranges are at most `max_gap`, the whole
  `length` channels are read (no slice at all).

  Args:
    ranges: Sorted, disjoint `(start, stop)` pairs, as `runs` returns.
    length: Channels of the tensor the ranges index.
    max_gap: Largest number of unread channels worth reading instead of
      slicing around them; 0 or less merges nothing (ranges that touch are
      already one run).

  Returns:
    A list of `(start, stop)` pairs covering every input range.
  """
  if max_gap <= 0 or not ranges:
    return list(ranges)
  merged = [ranges[0]]
  for start, stop in ranges[1:]:
    if start - merged[-1][1] <= max_gap:
      merged[-1] = (merged[-1][0], stop)
    else:
      merged.append((start, stop))
  if length - sum(stop - start for start, stop in merged) <= max_gap:
    return [(0, length)]
  return merged


# The channels a gather reads are padded to a multiple of this (zero kernel
# rows), when there are 16 or more and enough unread ones: ONNX Runtime's
# NCHWc block on AVX-512 (8 on AVX2, which 16 is a multiple of).
GATHER_CHANNEL_MULTIPLE = 16


def pad_to_multiple(ranges, lengths, multiple):
  """Ranges of several tensors widened to read a multiple of `multiple`.

  ONNX Runtime runs a convolution in its blocked NCHWc layout, several
  times faster than its plain kernel on these shapes, only when its input
  channels are a multiple of the block (16 with AVX-512, 8 with AVX2) or
  fewer than one block; a layer that reads a few unread channels more
  (with zero kernel rows) gets there.

  Args:
    ranges: One list of sorted, disjoint `(start, stop)` pairs per tensor.
    lengths: Channels of each tensor.
    multiple: The read count wanted; None or 1: `ranges` as they are.

  Returns:
    `ranges` with unread channels added, the first unread ones of the first
    tensors first, until the channels read are a multiple of `multiple`;
    only of tensors read already (a gather concatenates only those), and
    unchanged if fewer than `multiple` are read, or if too few channels are
    left unread to get there.
  """
  count = sum(stop - start for r in ranges for start, stop in r)
  if not multiple or multiple <= 1 or count < multiple:
    return [list(r) for r in ranges]
  missing = -count % multiple
  if missing > sum(length for r, length in zip(ranges, lengths) if r) - count:
    return [list(r) for r in ranges]
  result = []
  for r, length in zip(ranges, lengths):
    read = positions(r)
    unread = np.setdiff1d(np.arange(length), read)[:missing if r else 0]
    missing -= len(unread)
    result.append(runs(np.union1d(read, unread)) if len(unread) else list(r))
  return result


def max_gap(slice_cost_macs, output_size, kernel_size, filters, layer_name):
  """Unread channels worth reading, with zero kernel rows, to save a slice.

  Args:
    slice_cost_macs: The MACs one slice costs (`strip`'s argument), >= 0.
    output_size: The layer's output (height, width); may hold None when the
      cost is 0.
    kernel_size: The conv's (height, width).
    filters: Filters the compact conv computes.
    layer_name: For the error.

  Returns:
    The largest gap (in channels) that costs at most `slice_cost_macs`: one
    input channel costs every filter at every output pixel.

  Raises:
    ValueError: if the cost is above 0 and the output size is unknown.
  """
  if not slice_cost_macs:
    return 0
  if None in tuple(output_size):
    raise ValueError(
        f"slice_cost_macs={slice_cost_macs!r} needs the spatial size of "
        f"{layer_name!r}'s output, which is unknown; build the model with a "
        "fixed input_shape, or pass slice_cost_macs=0.")
  per_channel = (int(np.prod(output_size)) * int(np.prod(kernel_size)) *
                 filters)
  return int(slice_cost_macs // per_channel)


def bounded_concat(parts, max_inputs, concat, name):
  """`parts` joined by concatenations of at most `max_inputs` inputs.

  Consecutive groups of `max_inputs` parts, from the first, are joined by
  `concat(group, f"{name}_concat{level}_{i}")`, then the groups, until at
  most `max_inputs` remain for the last, `concat(parts, None)`. A single
  part comes back as it is. The framework is the caller's: `concat` makes
  (or reuses) the concatenation.

  Args:
    parts: Tensors to join, in order.
    max_inputs: The most inputs of one concatenation (>= 2), or None for
      one concatenation of all parts.
    concat: `(parts, name or None) -> tensor`.
    name: Prefix of the group concatenations' names.
  """
  level = 0
  while max_inputs and len(parts) > max_inputs:
    grouped = []
    for start in range(0, len(parts), max_inputs):
      group = parts[start:start + max_inputs]
      grouped.append(group[0] if len(group) == 1 else concat(
          group, f"{name}_concat{level}_{len(grouped)}"))
    parts, level = grouped, level + 1
  return parts[0] if len(parts) == 1 else concat(parts, None)


class ConcatReuse:
  """Concatenations made so far, by the pieces they join, for reuse.

  A DenseNet layer reads what the layer before it read plus a little: a
  stock DenseNet concatenates the previous concatenation and one new map.
  This finds, for the pieces (whole maps or slices) a layer reads, earlier
  concatenations that join only some of them. Pieces are compared by
  identity (`id`); the framework is the caller's. When not `enabled`,
  nothing is reused: parts come back as they are.
  """

  def __init__(self, channels, enabled=True):
    """`channels(tensor)`: the number of channels of a tensor."""
    self._channels = channels
    self.enabled = enabled
    self._atoms = {}  # id of a concatenation -> (it, ids of its pieces)

  def joined(self, tensor, group):
    """Records that `tensor` concatenates `group` (pieces or earlier
    concatenations, expanded to their pieces); returns `tensor`."""
    self._atoms[id(tensor)] = (tensor, tuple(
        a for part in group
        for a in self._atoms.get(id(part), (None, (id(part),)))[1]))
    return tensor

  def reused(self, parts):
    """`parts` with earlier concatenations of some of them in their place.

    Greedily, the earlier concatenation of the most channels whose pieces
    are all among those left stands in for them (first), until none does;
    the pieces left follow in their order.

    Returns:
      `(parts, order)`: `order[i]` is the position, among the channels of
      the given `parts` in their order, of channel i of the new parts.
    """
    starts = np.cumsum([0] + [self._channels(p) for p in parts])
    spans = [np.arange(starts[i], starts[i + 1]) for i in range(len(parts))]
    left = {id(p): i for i, p in enumerate(parts)}
    if not self.enabled or len(left) != len(parts):  # (or a piece read twice)
      return list(parts), np.arange(starts[-1])
    used = []  # (concatenation, indices of the parts it joins)
    while True:
      fits = [(self._channels(t), -n, t, atoms) for n, (t, atoms) in
              enumerate(self._atoms.values())
              if len(atoms) > 1 and all(a in left for a in atoms)]
      if not fits:
        break
      _, _, tensor, atoms = max(fits, key=lambda fit: fit[:2])
      used.append((tensor, [left.pop(a) for a in atoms]))
    rest = sorted(left.values())
    order = [spans[i] for _, indices in used for i in indices]
    order += [spans[i] for i in rest]
    return ([t for t, _ in used] + [parts[i] for i in rest],
            np.concatenate(order))

  def reused_prefix(self, parts):
    """`parts` with the longest earlier concatenation of its first parts
    in their place: the same channels in the same order."""
    ids = [id(part) for part in parts]
    fits = [(len(atoms), tensor) for tensor, atoms in self._atoms.values()
            if self.enabled and 1 < len(atoms) <= len(ids) and
            list(atoms) == ids[:len(atoms)]]
    if not fits:
      return list(parts)
    length, tensor = max(fits, key=lambda fit: fit[0])
    return [tensor] + list(parts[length:])


ANY_ORDER = "any"        # Reads any order of its input channels.
PASSES_ORDER = "passes"  # Its output channel c is input channel c.
FIXED_ORDER = "fixed"    # Needs its input channels in their order.


def reorderable(tensors, readers, outputs):
  """Tensors whose channels may be put in any order without changing outputs.

  Which producers' filters the strip step may reorder, the one decision
  of both paths (`tfsdn.layout`, `tfsdn.keras3.strip`). A tensor
  qualifies when it is not a model output and every reader either reads
  any order (a convolution or dense layer, whose kernel rows follow the
  order) or passes channel c on as channel c (a concatenation, a
  channel-wise layer, a global pooling) to a tensor that qualifies. So no
  order chosen for contiguous reads reaches a model's output: a feature
  extractor's features stay in their channels.

  Args:
    tensors: Keys (any hashable) of the tensors that might qualify
      (channels-last, 2-D or 4-D), producers before consumers.
    readers: A dict from key to a list, one `(how, output key)` pair per
      reader of the tensor: `how` is `ANY_ORDER`, `PASSES_ORDER` (then the
      output key is the reader's output) or `FIXED_ORDER`.
    outputs: Keys of the model's outputs.

  Returns:
    A set of keys.
  """
  outputs = set(outputs)
  found = set()
  for key in reversed(list(tensors)):
    if key in outputs:
      continue
    if all(how == ANY_ORDER or (how == PASSES_ORDER and output in found)
           for how, output in readers.get(key, ())):
      found.add(key)
  return found


def count_runs(reads, order):
  """Contiguous ranges the consumers read when the channels are in `order`.

  Args:
    reads: Boolean matrix [consumers, channels]: `reads[i, c]` is True if
      consumer i reads channel c.
    order: A permutation of the channels: position p holds channel
      `order[p]`.

  Returns:
    The number of ranges (slices) summed over consumers, an int. A consumer
    that reads every channel or none counts 0: it needs no slice.
  """
  reads = np.asarray(reads, bool)[:, order]
  partial = ~(reads.all(axis=1) | ~reads.any(axis=1))
  padded = np.pad(reads[partial].astype(np.int8), ((0, 0), (1, 0)))
  return int((np.diff(padded, axis=1) == 1).sum())


def order_channels(reads):
  """A filter order under which each consumer reads few contiguous ranges.

  Channels that the same consumers read are kept together, and channels read
  by more consumers come first, so nested selections (a consumer reading a
  subset of what another reads) become prefixes. Several such orders are
  tried and the one with the fewest ranges (`count_runs`) wins; ties keep
  the original order as far as possible.

  Example:

  ```python
  reads = np.array([[1, 0, 1, 0], [1, 0, 1, 1]], bool)
  order = order_channels(reads)   # e.g. [0, 2, 3, 1]: two prefixes
  ```

  Args:
    reads: Boolean matrix [consumers, channels].

  Returns:
    A permutation of `range(channels)`, an int vector.

  Raises:
    ValueError: if `reads` is not a 2-D matrix.
  """
  reads = np.asarray(reads, bool)
  if reads.ndim != 2:
    raise ValueError(
        f"reads must be a [consumers, channels] matrix. Received shape: "
        f"{reads.shape}")
  channels = reads.shape[1]
  identity = np.arange(channels)
  if not reads.shape[0] or channels < 2:
    return identity
  candidates = [identity]
  counts = reads.sum(axis=0)
  # np.lexsort sorts by its last key first.
  for consumer_order in (np.arange(reads.shape[0]),
                         np.arange(reads.shape[0])[::-1],
                         np.argsort(-reads.sum(axis=1), kind="stable")):
    keys = [~reads[i] for i in consumer_order[::-1]]
    candidates.append(np.lexsort([identity] + keys + [-counts]))
    candidates.append(np.lexsort([identity] + keys))
  candidates.append(_chain_similar(reads, counts))
  costs = [count_runs(reads, order) for order in candidates]
  return candidates[int(np.argmin(costs))]


def _chain_similar(reads, counts):
  """Greedy path: from the most-read channel, always to the most similar."""
  columns = reads.T.astype(np.int32)
  left = list(np.argsort(-counts, kind="stable"))
  order = [left.pop(0)]
  while left:
    distance = np.abs(columns[left] - columns[order[-1]]).sum(axis=1)
    order.append(left.pop(int(np.argmin(distance))))
  return np.array(order)
