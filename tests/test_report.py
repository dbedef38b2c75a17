import numpy as np
import pytest

import tfsdn
from tfsdn.compat import keras
from tests import helpers
from tfsdn.plot import tick_labels


def _count_weights(model):
  return sum(int(np.prod(w.shape)) for w in model.weights)


def test_totals_agree_across_forms_and_with_compact_weights(images):
  dense = helpers.tiny_densenet()
  pruned = helpers.tiny_densenet()
  pruned.set_weights(dense.get_weights())
  helpers.prune_randomly(pruned, 0.5)
  compact = tfsdn.strip_to_compact(pruned, **helpers.EXACT)
  before = tfsdn.model_report(dense)
  on_pruned = tfsdn.model_report(pruned)
  after = tfsdn.model_report(compact)
  assert (before.form, on_pruned.form, after.form) == (
      "dense", "pruned", "compact")
  assert after.total_params == _count_weights(compact)
  assert on_pruned.total_params == after.total_params
  assert on_pruned.total_macs == after.total_macs
  assert after.total_params < before.total_params
  assert after.total_macs < 0.7 * before.total_macs
  row = {r.name: r for r in on_pruned.rows}["block2_layer2"]
  layer = pruned.get_layer("block2_layer2")
  assert (row.input_live, row.input_offered) == (
      len(layer.live_channels()), layer.input_channels)
  # 3x3 conv, kept inputs x filters x 16x16 positions.
  assert row.macs == 9 * row.input_live * row.filters * 16 * 16
  assert "block2_layer2" in after.to_markdown()
  pruned_table = on_pruned.to_markdown()
  assert (f"| block2_layer2 | prunable: connections | {row.input_live} / "
          f"{layer.input_channels} |") in pruned_table
  assert "channels of its concatenated input in the dense model" in (
      pruned_table)
  assert "no record of what pruning removed" in after.to_markdown()
  assert "MACs" in tfsdn.comparison_markdown(before, after)


def test_dense_macs_of_densenet40():
  report = tfsdn.model_report(tfsdn.densenet.DenseNet(40, 12))
  # Hand count: 3x3 convs of three blocks, 1x1 transitions, stem, classifier.
  macs = 3 * 3 * 3 * 16 * 32 * 32
  for block, size in enumerate([32, 16, 8]):
    start = 16 + block * 12 * 12
    macs += sum(9 * (start + 12 * i) * 12 * size * size for i in range(12))
    if block < 2:
      channels = start + 144
      macs += channels * channels * size * size
  macs += 448 * 10
  assert report.total_macs == macs


def test_a_model_of_any_image_size_is_counted_at_the_size_given():
  fixed = helpers.tiny_densenet()
  any_size = helpers.tiny_densenet(input_shape=(None, None, 3))
  with pytest.raises(ValueError, match=r"unknown size.*input_size=\(32, 32\)"):
    tfsdn.model_report(any_size)
  with pytest.raises(ValueError, match=r"input_size=\(0, 32\)"):
    tfsdn.model_report(any_size, input_size=(0, 32))
  expected = tfsdn.model_report(fixed)
  for model in (any_size, tfsdn.strip(any_size, **helpers.EXACT), fixed):
    report = tfsdn.model_report(model, input_size=(32, 32))
    assert (report.total_macs, report.total_params) == (
        expected.total_macs, expected.total_params)
  # At 64x64 every conv computes 4 times the positions; the classifier
  # (40 pooled features x 10 classes) does not grow.
  bigger = tfsdn.model_report(any_size, input_size=64)
  assert bigger.total_macs == 4 * (expected.total_macs - 40 * 10) + 40 * 10


def test_connectivity_matrix_of_a_pruned_block():
  model = helpers.tiny_densenet()
  layer = model.get_layer("block1_layer2")
  scores = np.ones(20, "float32")
  scores[:8] = 0  # half of the 16 stem maps
  scores[16:18] = 0  # half of block1_layer1's 4 maps
  layer.contribution_score.assign(scores)
  report = tfsdn.model_report(model)
  block = report.blocks[0]
  assert block.consumers == ["block1_layer1", "block1_layer2", "transition1"]
  assert block.sources == ["stem_conv", "block1_layer1", "block1_layer2"]
  np.testing.assert_allclose(block.matrix, [[1, np.nan, np.nan],
                                            [0.5, 0.5, np.nan],
                                            [1, 1, 1]])
  assert len(report.blocks) == 3


def test_plot_connectivity_writes_a_png(tmp_path):
  model = helpers.tiny_densenet()
  helpers.prune_randomly(model, 0.5)
  path = tmp_path / "connectivity.png"
  tfsdn.plot_connectivity(model, path)
  tfsdn.plot_connectivity(tfsdn.model_report(model), path)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert [p.name for p in tmp_path.iterdir()] == ["connectivity.png"]


def test_report_reads_the_strip_record_without_stripping_again(monkeypatch):
  pruned = helpers.tiny_densenet()
  helpers.prune_randomly(pruned, 0.5)
  stripped = tfsdn.strip(pruned, **helpers.EXACT)  # As the report strips.
  layer = pruned.get_layer("block2_layer2")
  record = stripped.layers["block2_layer2"]
  np.testing.assert_array_equal(record.live, layer.live_mask())
  assert len(record.offered) == layer.input_channels
  assert record.offered[0] == ("transition1", 0)
  assert record.compact_layers == ("block2_layer2_bn", "block2_layer2")
  assert stripped.pruned
  expected = tfsdn.model_report(pruned)

  def no_second_strip(model):
    raise AssertionError("model_report stripped the model again")

  monkeypatch.setattr(tfsdn.report, "strip", no_second_strip)
  report = tfsdn.model_report(stripped)
  assert report.to_dict() == expected.to_dict()
  assert report.form == "pruned"
  assert report.prunable_params > 0


def test_a_stock_model_is_counted_without_prunable_rows(images):
  pruned = helpers.tiny_densenet()
  helpers.prune_randomly(pruned, 0.5)
  compact = tfsdn.strip_to_compact(pruned, **helpers.EXACT)
  report = tfsdn.model_report(compact)
  assert report.form == "compact" and report.blocks == []
  assert {r.kind for r in report.rows} == {"conv", "dense"}
  assert report.total_macs == tfsdn.model_report(pruned).total_macs
  nested = keras.Sequential([keras.Input((32, 32, 3)), compact,
                             keras.layers.Softmax()])
  assert tfsdn.model_report(nested).to_dict()["rows"] == report.to_dict()[
      "rows"]


def test_plot_labels_the_block_input_and_the_transition():
  report = tfsdn.model_report(helpers.tiny_densenet())
  assert tick_labels(report, 0) == ({0: "1", 1: "2", 2: "T"},
                                    {0: "in", 1: "1", 2: "2"})
  assert tick_labels(report, 2) == ({0: "1", 1: "2"}, {0: "in", 1: "1"})
  # A block of 24 layers + transition: every third label, the last always.
  rows, columns = tick_labels(tfsdn.model_report(
      tfsdn.densenet.DenseNet(depth=76, growth_rate=2)), 0)
  assert list(rows) == list(range(0, 25, 3)) and rows[24] == "T"
  assert rows[21] == "22" and columns == {0: "in", **{
      j: str(j) for j in range(3, 25, 3)}}


def test_plot_has_no_empty_right_margin(tmp_path):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  path = tmp_path / "connectivity.png"
  tfsdn.plot_connectivity(helpers.tiny_densenet(), path)
  pixels = plt.imread(str(path))[..., :3]
  drawn_columns = np.flatnonzero((pixels < 0.9).any(axis=(0, 2)))
  assert drawn_columns[-1] > 0.95 * pixels.shape[1]
