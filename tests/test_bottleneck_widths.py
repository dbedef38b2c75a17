"""Bottleneck widths of DenseNet-B nets: pruned, stripped, reported."""

import numpy as np

import tfsdn
from tfsdn import schedule as schedule_lib
from tfsdn import testing
from tests import helpers


def _bc(**kwargs):
  return tfsdn.densenet.DenseNet(depth=16, growth_rate=4, bottleneck=True,
                                 compression=0.5, **kwargs)


def _images(count=4, seed=0):
  return np.random.default_rng(seed).uniform(
      0, 255, (count, 32, 32, 3)).astype("float32")


def test_pruned_widths_remove_bottleneck_filters_and_keep_the_function():
  model = _bc()
  helpers.randomize_batch_norm(model)
  testing.prune_at_random(model, 0.5, seed=3)
  stripped = tfsdn.strip(model)
  x = _images()
  np.testing.assert_allclose(stripped.model(x, training=False),
                             model(x, training=False), atol=1e-4)
  roles = {name: layer.prunes for name, layer in stripped.layers.items()}
  widths = [n for n, r in roles.items() if r == "width"]
  assert widths == [f"block{b}_layer{i}_conv" for b in (1, 2, 3)
                    for i in (1, 2)]
  for name in widths:
    bottleneck = stripped.layers[name.replace("_conv", "_bottleneck")]
    # The bottleneck computes exactly the filters its 3x3 conv still reads.
    assert bottleneck.filters_computed == int(
        stripped.layers[name].live.sum()) == 8
    assert bottleneck.filters == 16


def test_report_and_plot_show_connections_and_widths_apart(tmp_path):
  model = _bc()
  testing.prune_at_random(model, 0.5, seed=1)
  report = tfsdn.model_report(model)
  prunes = {r.name: r.prunes for r in report.rows if r.kind == "prunable"}
  assert set(prunes.values()) == {"connections", "width"}
  assert len(report.rows_pruning("width")) == 6
  assert [name for name, _, _ in report.widths] == [
      n for n, p in prunes.items() if p == "width"]
  consumers = [c for block in report.blocks for c in block.consumers]
  assert not set(consumers) & {name for name, _, _ in report.widths}
  text = report.to_markdown()
  assert "prunable: width" in text and "prune bottleneck widths" in text
  tfsdn.plot_connectivity(report, str(tmp_path / "c.png"))
  assert (tmp_path / "c.png").stat().st_size > 0


def test_widths_and_connections_pruned_at_different_rates_by_tfmot():
  pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(_bc(), {
      "*_conv": tfsdn.StagedSparsity([(2, 0.25)]),
      "*": tfsdn.StagedSparsity([(2, 0.5)])}))
  helpers.fit_steps(pruned, 3)
  for layer in tfsdn.prunable_layers(pruned):
    rate = 0.25 if layer.name.endswith("_conv") else 0.5
    assert len(layer.pruned_channels()) == schedule_lib.pruned_count(
        layer.input_channels, rate), layer.name
  compact = tfsdn.strip_to_compact(pruned)
  x = _images(2)
  np.testing.assert_allclose(compact(x, training=False),
                             pruned(x, training=False), atol=1e-4)


def test_global_allocation_covers_widths_with_an_override():
  plan = tfsdn.GlobalAllocation([(2, 0.7)], floor=0.1,
                                overrides={"*_conv": 0.25})
  pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(_bc(), plan))
  helpers.fit_steps(pruned, 3)
  for layer in tfsdn.prunable_layers(pruned):
    if layer.name.endswith("_conv"):
      assert len(layer.pruned_channels()) == schedule_lib.pruned_count(
          layer.input_channels, 0.25)
  report = tfsdn.model_report(tfsdn.strip(pruned))
  assert report.total_macs <= 0.7 * tfsdn.allocation.dense_macs(_bc())


def test_unpruned_builders_keep_their_trainable_parameters():
  def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)
  # DenseNet-BC (L=16, k=4): the same trainable weights as with the stock
  # BN-ReLU-3x3 conv after each bottleneck (counted on that builder).
  assert trainable(_bc()) == 5_466
