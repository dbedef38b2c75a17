import re
from unittest import mock

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import tensorflow as tf

import tfsdn
from tfsdn.common import channel_order
from tfsdn import compact as compact_lib
from tfsdn import testing
from tfsdn.compat import keras
from tests import helpers


def test_runs_are_maximal_ranges_of_consecutive_positions():
  assert channel_order.runs([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]
  assert channel_order.runs([]) == []
  assert list(channel_order.positions([(0, 3), (5, 6), (7, 9)])) == [
      0, 1, 2, 5, 7, 8]
  assert not len(channel_order.positions([]))


def test_nested_selections_become_prefixes():
  rng = np.random.default_rng(0)
  for _ in range(20):
    importance = rng.permutation(12)
    # Each consumer reads the k most important channels: nested sets.
    reads = np.array([importance < k for k in rng.integers(1, 12, 6)])
    order = channel_order.order_channels(reads)
    assert sorted(order) == list(range(12))
    ordered = reads[:, order]
    for row in ordered:
      assert row[:row.sum()].all()  # A prefix: one range from channel 0.


def test_ordering_never_needs_more_ranges_than_the_original_order():
  rng = np.random.default_rng(1)
  for _ in range(20):
    reads = rng.random((8, 12)) < 0.5
    order = channel_order.order_channels(reads)
    assert sorted(order) == list(range(12))
    assert (channel_order.count_runs(reads, order) <=
            channel_order.count_runs(reads, np.arange(12)))


def test_order_channels_rejects_a_vector():
  with pytest.raises(ValueError, match=r"Received shape: \(3,\)"):
    channel_order.order_channels(np.ones(3, bool))


def _compact_ops(compact, tmp_path):
  path = tfsdn.export_tflite(compact, tmp_path / "compact.tflite")
  interpreter = tf.lite.Interpreter(model_path=path)
  return [op["op_name"] for op in interpreter._get_ops_details()]  # pylint: disable=protected-access


@pytest.mark.parametrize("seed", [0, 1])
def test_random_patterns_strip_equivalent_with_slices_not_gathers(
    images, tmp_path, seed):
  model = helpers.tiny_densenet()
  helpers.randomize_batch_norm(model, seed)
  helpers.prune_randomly(model, 0.5, seed)
  compact = tfsdn.strip_to_compact(model, **helpers.EXACT)
  np.testing.assert_allclose(model(images, training=False).numpy(),
                             compact(images, training=False).numpy(),
                             atol=1e-4)
  ops = _compact_ops(compact, tmp_path)
  assert "GATHER" not in ops
  assert "STRIDED_SLICE" in ops


def test_nested_patterns_need_one_slice_per_producer_and_width(images,
                                                               tmp_path):
  # Consumer i of a block reads the first keep_i channels (by a random
  # importance) of every producer: after ordering, prefixes, and a slice of
  # a given width is shared by all consumers reading that width.
  model = helpers.tiny_densenet()
  helpers.randomize_batch_norm(model)
  rng = np.random.default_rng(0)
  importance = {}
  stripped_sources = tfsdn.strip(model)
  widths = set()
  for layer in tfsdn.prunable_layers(model):
    record = stripped_sources.layers[layer.name]
    keep = int(rng.integers(1, 4))
    scores = np.zeros(layer.input_channels, "float32")
    for i, (source, channel) in enumerate(record.offered):
      count = stripped_sources.source_channels[source]
      rank = importance.setdefault(source, rng.permutation(count))[channel]
      scores[i] = 1.0 if rank < keep else 0.0
      widths.add((source, min(keep, count)))
    layer.contribution_score.assign(scores)
  compact = tfsdn.strip_to_compact(model, **helpers.EXACT)
  np.testing.assert_allclose(model(images, training=False).numpy(),
                             compact(images, training=False).numpy(),
                             atol=1e-4)
  slices = _compact_ops(compact, tmp_path).count("STRIDED_SLICE")
  assert 0 < slices <= len(widths)
  # With a slice cost, a reader of a shorter prefix reads a longer one that
  # an earlier reader sliced (zero kernel rows), in every layout.
  shared = tfsdn.strip(model, slice_cost_macs=2e5, pool_first=False)
  np.testing.assert_allclose(model(images, training=False).numpy(),
                             shared.model(images, training=False).numpy(),
                             atol=1e-4)
  assert _compact_ops(shared.model, tmp_path).count("STRIDED_SLICE") <= slices
  gathered = tfsdn.strip(model, slice_cost_macs=2e5, channel_reads="gather",
                         pool_first=False)
  assert (tfsdn.model_report(gathered.model).total_macs ==
          tfsdn.model_report(shared.model).total_macs)


def test_prefix_patterns_read_every_producer_as_one_prefix(images, tmp_path):
  # testing.prune_to_prefixes, the best case deploy_speed.py --pattern=
  # prefixes times: each layer reads its newest input whole and the first
  # half of every other producer, so every filter stays computed and the
  # strip needs one slice per producer.
  model = helpers.tiny_densenet()
  helpers.randomize_batch_norm(model)
  testing.prune_to_prefixes(model, 0.5)
  stripped = tfsdn.strip(model, **helpers.EXACT)
  partly_read = set()
  for record in stripped.layers.values():
    assert record.filters_computed == record.filters
    newest = record.offered[-1][0]
    for source in {s for s, _ in record.offered}:
      read = sorted(c for (s, c), live in zip(record.offered, record.live)
                    if s == source and live)
      width = stripped.source_channels[source]
      expected = width if source == newest else (
          width - testing.pruned_count(width, 0.5))
      assert read == list(range(expected)), (record.name, source, read)
      if expected < width:
        partly_read.add(source)
  np.testing.assert_allclose(model(images, training=False).numpy(),
                             stripped.model(images, training=False).numpy(),
                             atol=1e-4)
  slices = _compact_ops(stripped.model, tmp_path).count("STRIDED_SLICE")
  assert 0 < slices <= len(partly_read)
  with pytest.raises(ValueError, match="sparsity.*1.0"):
    testing.prune_to_prefixes(model, 1.0)


@hypothesis.settings(deadline=None, max_examples=200)
@hypothesis.given(
    positions=st.lists(st.integers(0, 39), unique=True).map(sorted),
    extra=st.integers(0, 8), max_gap=st.integers(-1, 12))
def test_merged_runs_cover_every_read_and_leave_only_wide_gaps(
    positions, extra, max_gap):
  length = (max(positions) + 1 if positions else 0) + extra
  ranges = channel_order.runs(positions)
  merged = channel_order.merge_runs(ranges, length, max_gap)
  covered = [c for a, b in merged for c in range(a, b)]
  assert covered == sorted(set(covered))  # Sorted, disjoint.
  assert set(positions) <= set(covered)
  assert len(merged) <= len(ranges)
  if max_gap <= 0 or not ranges:  # Nothing read stays nothing read.
    assert merged == ranges
  elif merged != [(0, length)]:
    # Every gap left is wider than max_gap, and so is what is left unread.
    assert all(b1 - a0 > max_gap for (_, a0), (b1, _) in zip(merged,
                                                             merged[1:]))
    assert length - len(covered) > max_gap
  # Nothing outside the first and last position is read, unless the whole
  # tensor is.
  if positions and merged != [(0, length)]:
    assert min(covered) == positions[0] and max(covered) == positions[-1]


def _slices_and_macs(compact, tmp_path, name):
  path = tfsdn.export_tflite(compact, tmp_path / f"{name}.tflite")
  interpreter = tf.lite.Interpreter(model_path=path)
  ops = [op["op_name"] for op in interpreter._get_ops_details()]  # pylint: disable=protected-access
  return ops.count("STRIDED_SLICE"), tfsdn.model_report(compact).total_macs


def test_slice_cost_trades_macs_for_slices_with_the_same_function(
    images, tmp_path):
  model = helpers.tiny_densenet()
  helpers.randomize_batch_norm(model, 3)
  helpers.prune_randomly(model, 0.5, 3)
  reference = model(images, training=False).numpy()
  exact = tfsdn.strip(model, **helpers.EXACT)
  figures = [_slices_and_macs(exact.model, tmp_path, "exact")]
  for cost in (20_000, 200_000, 1e12):
    stripped = tfsdn.strip(model, slice_cost_macs=cost, pool_first=False)
    np.testing.assert_allclose(
        stripped.model(images, training=False).numpy(), reference, atol=1e-4)
    figures.append(_slices_and_macs(stripped.model, tmp_path, f"c{cost:g}"))
    for name, record in stripped.layers.items():
      # The record still says what is live; read-only channels multiply
      # zero kernel rows.
      np.testing.assert_array_equal(record.live, exact.layers[name].live)
      kernel = stripped.model.get_layer(name).get_weights()[0]
      zero_rows = int((np.abs(kernel).sum(axis=(0, 1, 3)) == 0).sum())
      exact_kernel = exact.model.get_layer(name).get_weights()[0]
      assert kernel.shape[2] - exact_kernel.shape[2] <= zero_rows
  slices, macs = zip(*figures)
  assert list(slices) == sorted(slices, reverse=True)
  assert list(macs) == sorted(macs)
  assert slices[0] > slices[-1] == 0  # Infinite cost: whole maps only.
  assert macs[0] < macs[-1]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1e5", True])
def test_slice_cost_must_be_a_finite_number(bad):
  model = helpers.tiny_densenet()
  with pytest.raises(ValueError, match=re.escape(f"slice_cost_macs={bad!r}")):
    tfsdn.strip(model, slice_cost_macs=bad)


def test_slice_cost_needs_a_known_spatial_size_only_when_above_zero(images):
  model = tfsdn.densenet.DenseNet(7, 4, input_shape=(None, None, 3))
  helpers.randomize_batch_norm(model, 0)
  helpers.prune_randomly(model, 0.5, 0)
  compact = tfsdn.strip_to_compact(model)  # The default needs no size.
  np.testing.assert_allclose(compact(images, training=False).numpy(),
                             model(images, training=False).numpy(), atol=1e-4)
  with pytest.raises(ValueError, match="slice_cost_macs=100000.0 needs the "
                     "spatial size"):
    tfsdn.strip(model, slice_cost_macs=1e5)
  with pytest.raises(ValueError, match=r"slice_cost_macs=10{400}"):
    tfsdn.strip(model, slice_cost_macs=10**400)


@hypothesis.settings(deadline=None, max_examples=200)
@hypothesis.given(
    tensors=st.lists(st.tuples(st.integers(0, 40), st.data()), min_size=1,
                     max_size=5),
    multiple=st.sampled_from([None, 1, 4, 16]))
def test_padding_to_a_multiple_adds_unread_channels_of_tensors_read(
    tensors, multiple):
  lengths, ranges = [], []
  for length, data in tensors:
    read = data.draw(st.lists(st.integers(0, max(length - 1, 0)),
                              unique=True, max_size=length).map(sorted))
    lengths.append(length)
    ranges.append(channel_order.runs(read))
  padded = channel_order.pad_to_multiple(ranges, lengths, multiple)
  count = sum(b - a for r in ranges for a, b in r)
  new_count = sum(b - a for r in padded for a, b in r)
  room = sum(n for r, n in zip(ranges, lengths) if r)
  for before, after, length in zip(ranges, padded, lengths):
    covered = list(channel_order.positions(after))
    assert covered == sorted(set(covered)) and all(
        0 <= c < length for c in covered)
    assert set(channel_order.positions(before)) <= set(covered)
    if not before:  # A tensor not read gets nothing.
      assert not after
  if not multiple or multiple <= 1 or count < multiple or (
      count + (-count % multiple) > room):
    assert padded == ranges
  else:
    assert new_count % multiple == 0 and new_count - count < multiple


def _same_strip_other_reads(images, tmp_path, cost, channel_reads, seed,
                            **kwargs):
  """(sliced, other): strips of one model; checks they are the same model.

  `other` reads through `channel_reads` (and `kwargs` to `strip`). Same
  function (bit-equal), same record and MACs, and `other` reloads from
  `.keras`. Gathers read exactly here (no padding to a multiple of 16:
  `test_gathers_read_a_multiple_of_16_channels_with_the_same_function`).
  """
  model = helpers.tiny_densenet()
  helpers.randomize_batch_norm(model, seed)
  helpers.prune_randomly(model, 0.5, seed)
  # Each read on its own, fused batch norm: bit-equal functions.
  kwargs = {"reuse_concats": False, "fused_batch_norm": True, **kwargs}
  sliced = tfsdn.strip(model, slice_cost_macs=cost,
                       reuse_concats=kwargs["reuse_concats"],
                       fused_batch_norm=kwargs["fused_batch_norm"])
  with mock.patch.object(channel_order, "GATHER_CHANNEL_MULTIPLE", None):
    other = tfsdn.strip(model, slice_cost_macs=cost,
                        channel_reads=channel_reads, **kwargs)
  np.testing.assert_array_equal(other.model(images, training=False),
                                sliced.model(images, training=False))
  for name, record in other.layers.items():
    np.testing.assert_array_equal(record.live, sliced.layers[name].live)
  assert tfsdn.model_report(other).total_macs == tfsdn.model_report(
      sliced).total_macs
  path = tmp_path / f"{channel_reads}.keras"
  other.model.save(path)
  np.testing.assert_array_equal(
      tfsdn.compat.keras.models.load_model(path)(images, training=False),
      other.model(images, training=False))
  return sliced, other


@pytest.mark.parametrize("cost", [0, 200_000])
def test_split_reads_are_one_op_per_feature_map_with_the_same_function(
    images, tmp_path, cost):
  sliced, split = _same_strip_other_reads(images, tmp_path, cost, "split", 4)
  # One split per feature map read in part, where there was a slice per
  # range: as many splits as distinct sliced tensors.
  sliced_maps = {layer.inbound_nodes[0].call_args[0].name
                 for layer in sliced.model.layers
                 if layer.name.startswith("tf.__operators__.getitem")}
  splits = [layer for layer in split.model.layers
            if layer.name.startswith("tf.split")]
  assert len(splits) == len(sliced_maps) > 0
  assert not any(layer.name.startswith("tf.__operators__.getitem")
                 for layer in split.model.layers)


@pytest.mark.parametrize("cost", [0, 200_000])
def test_gather_reads_are_one_op_per_layer_with_the_same_function(
    images, tmp_path, cost):
  _, gathered = _same_strip_other_reads(images, tmp_path, cost, "gather", 5)
  names = [layer.name for layer in gathered.model.layers]
  assert not any(name.startswith(("tf.__operators__.getitem", "tf.split"))
                 for name in names)
  # At most one gather per compact layer, none where it reads everything.
  gathers = sum(name.startswith("tf.compat.v1.gather") for name in names)
  partial = sum(1 for record in gathered.layers.values()
                if record.filters_computed and not record.live.all())
  assert 0 < gathers <= partial


@pytest.mark.parametrize("seed", [0, 1])
def test_gathers_read_a_multiple_of_16_channels_with_the_same_function(
    images, seed):
  # Growth 12: reads of every count, so most need padding.
  model = tfsdn.densenet.DenseNet(16, 12, input_shape=(8, 8, 3))
  helpers.randomize_batch_norm(model, seed)
  helpers.prune_randomly(model, 0.5, seed)
  exact = tfsdn.strip(model, slice_cost_macs=0, reuse_concats=False)
  gathered = tfsdn.strip(model, channel_reads="gather", reuse_concats=False)
  padded = 0
  for layer in gathered.model.layers:
    if isinstance(layer, tfsdn.compat.keras.layers.Conv2D):
      kernel = layer.get_weights()[0]
      wanted = exact.model.get_layer(layer.name).get_weights()[0].shape[2]
      read = kernel.shape[2]
      # Fewer than 16, or too few channels offered: as they are.
      assert read % 16 == 0 or read == wanted, (layer.name, read, wanted)
      assert read >= wanted
      # The channels read only to pad have zero kernel rows.
      zero_rows = np.all(kernel == 0, axis=(0, 1, 3)).sum()
      assert zero_rows >= read - wanted
      padded += read > wanted
  assert padded  # Some were padded.
  np.testing.assert_allclose(
      gathered.model(images[:, :8, :8], training=False),
      model(images[:, :8, :8], training=False), atol=1e-4, rtol=1e-4)
  assert tfsdn.model_report(gathered).total_macs > tfsdn.model_report(
      exact).total_macs


def _concatenations(model):
  return [layer for layer in model.layers
          if isinstance(layer, tfsdn.compat.keras.layers.Concatenate)]


@pytest.mark.parametrize("max_inputs", [2, 3])
@pytest.mark.parametrize("channel_reads", ["slice", "split", "gather"])
def test_max_concat_inputs_bounds_every_concatenation_not_the_function(
    images, tmp_path, channel_reads, max_inputs):
  sliced, bounded = _same_strip_other_reads(
      images, tmp_path, 0, channel_reads, 6, max_concat_inputs=max_inputs)
  assert max(len(c.input) for c in _concatenations(sliced.model)) > max_inputs
  concats = _concatenations(bounded.model)
  assert max(len(c.input) for c in concats) <= max_inputs
  # Each group is concatenated once, however many layers read it.
  groups = [tuple(t.name for t in c.input) for c in concats]
  assert len(set(groups)) == len(groups)


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(channels=st.lists(st.integers(1, 3), min_size=1, max_size=12),
                  max_inputs=st.integers(2, 6), data=st.data())
def test_bounded_concatenation_keeps_the_channel_order(channels, max_inputs,
                                                       data):
  # Each part holds its own channel numbers; some parts are repeated.
  keras = tfsdn.compat.keras
  order = data.draw(st.lists(st.integers(0, len(channels) - 1),
                             min_size=1, max_size=2 * len(channels)))
  inputs = [keras.Input((1, 1, c)) for c in channels]
  reads = tfsdn.compact._Reads(max_inputs=max_inputs)  # pylint: disable=protected-access
  first = reads.concatenate([inputs[i] for i in order], "a", "float32")
  again = reads.concatenate([inputs[i] for i in order], "b", "float32")
  model = keras.Model(inputs, [first, again])
  starts = np.cumsum([0] + channels)
  values = [np.arange(starts[i], starts[i + 1], dtype="float32")[None, None,
                                                                 None]
            for i in range(len(channels))]
  expected = np.concatenate([values[i] for i in order], -1)
  for output in model(values):
    np.testing.assert_array_equal(output, expected)
  concats = _concatenations(model)
  assert all(len(c.input) <= max_inputs for c in concats)
  # The second concatenation of the same parts reuses every group.
  assert not [c.name for c in concats
              if c.name.startswith("b_") and c.name != "b_concat"]


def test_max_concat_inputs_must_be_an_integer_of_at_least_2():
  for bad in (1, 0, -3, 2.0, True, "5"):
    with pytest.raises(ValueError, match=re.escape(
        f"max_concat_inputs={bad!r}")):
      tfsdn.strip(helpers.tiny_densenet(), max_concat_inputs=bad)


def test_channel_reads_must_be_known():
  with pytest.raises(ValueError, match="channel_reads='take'"):
    tfsdn.strip(helpers.tiny_densenet(), channel_reads="take")


@hypothesis.settings(deadline=None, max_examples=300)
@hypothesis.given(
    earlier=st.lists(st.tuples(st.integers(0, 15), st.integers(1, 8)),
                     max_size=5),
    wanted=st.lists(st.integers(0, 15), unique=True).map(sorted),
    max_gap=st.integers(0, 6))
def test_covering_reuses_earlier_ranges_without_overlap(earlier, wanted,
                                                        max_gap):
  # _Reads.covering widens a reader's ranges to ranges earlier readers read
  # (one slice fewer each) by at most max_gap channels, never reading a
  # channel twice.
  reads = compact_lib._Reads()  # pylint: disable=protected-access
  x = keras.Input((2, 2, 24))
  for start, width in earlier:
    reads.concat("layer", "float32", [("p", x, [(start, start + width)])])
  recorded = {(s, s + w) for s, w in earlier}
  ranges = channel_order.runs(wanted)
  result = reads.covering("p", ranges, max_gap)
  covered = channel_order.positions(result)
  assert np.all(np.diff(covered) > 0)  # Sorted, disjoint.
  assert set(wanted) <= set(covered.tolist())
  for start, stop in result:
    if (start, stop) in ranges:
      continue
    assert (start, stop) in recorded and max_gap > 0
    inside = [r for r in ranges if start <= r[0] and r[1] <= stop]
    assert inside and (stop - start) - (inside[0][1] - inside[0][0]) <= max_gap
  if max_gap == 0:
    assert result == ranges


def test_covering_shares_the_slice_of_a_longer_prefix():
  reads = compact_lib._Reads()  # pylint: disable=protected-access
  x = keras.Input((2, 2, 12))
  reads.concat("first", "float32", [("p", x, [(0, 10)])])
  assert reads.covering("p", [(0, 9)], 1) == [(0, 10)]
  assert reads.covering("p", [(0, 9)], 0) == [(0, 9)]
  assert reads.covering("p", [(0, 7)], 2) == [(0, 7)]  # 3 more: too many.
  assert reads.covering("q", [(0, 9)], 5) == [(0, 9)]  # Another map.
  # Two ranges inside one earlier range: read once.
  assert reads.covering("p", [(0, 4), (5, 9)], 6) == [(0, 10)]
  # A widening that would overlap the next range partly is not made.
  reads.concat("second", "float32", [("p", x, [(0, 6)])])
  assert reads.covering("p", [(0, 3), (5, 8)], 3) == [(0, 3), (5, 8)]


class _Piece:
  """A stand-in tensor: `labels` are the channels it holds, in order."""

  def __init__(self, labels):
    self.labels = list(labels)


@hypothesis.settings(deadline=None, max_examples=200)
@hypothesis.given(sizes=st.lists(st.integers(1, 3), min_size=2, max_size=8),
                  data=st.data())
def test_concat_reuse_keeps_every_channel_and_says_where(sizes, data):
  # Layers read random pieces in random order; each layer's concatenation
  # is recorded. The reused parts must hold exactly the channels read, in
  # the order `reused` reports, and reuse whatever earlier one fits.
  starts = np.cumsum([0] + sizes)
  pieces = [_Piece(range(starts[i], starts[i + 1])) for i in range(len(sizes))]
  reuse = channel_order.ConcatReuse(lambda part: len(part.labels))
  made = []
  for _ in range(data.draw(st.integers(1, 6))):
    parts = data.draw(st.permutations(pieces).flatmap(
        lambda p: st.just(p[:max(1, len(p) // 2)]) | st.just(p)))
    natural = np.concatenate([part.labels for part in parts])
    new, order = reuse.reused(parts)
    assert sorted(order) == list(range(len(natural)))
    np.testing.assert_array_equal(
        np.concatenate([part.labels for part in new]), natural[order])
    fits = [m for m in made if set(map(id, m.parts)) <= set(map(id, parts))]
    assert (len(new) < len(parts)) == any(len(m.parts) > 1 for m in fits)
    same = reuse.reused_prefix(parts)
    np.testing.assert_array_equal(
        np.concatenate([part.labels for part in same]), natural)
    joined = _Piece(np.concatenate([part.labels for part in new]))
    joined.parts = parts
    made.append(reuse.joined(joined, new))
  off = channel_order.ConcatReuse(lambda part: len(part.labels),
                                  enabled=False)
  off.joined(_Piece(range(starts[-1])), pieces)
  assert off.reused(pieces)[0] == pieces
  assert off.reused_prefix(pieces) == pieces
