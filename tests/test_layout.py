import numpy as np
import pytest
import tensorflow as tf

import tfsdn
from tfsdn import channel_order
from tests import helpers


def test_runs_are_maximal_ranges_of_consecutive_positions():
  assert channel_order.runs([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]
  assert channel_order.runs([]) == []


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
  compact = tfsdn.strip_to_compact(model)
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
  compact = tfsdn.strip_to_compact(model)
  np.testing.assert_allclose(model(images, training=False).numpy(),
                             compact(images, training=False).numpy(),
                             atol=1e-4)
  slices = _compact_ops(compact, tmp_path).count("STRIDED_SLICE")
  assert 0 < slices <= len(widths)
