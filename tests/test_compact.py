import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import tfsdn
from tfsdn import compact as compact_lib
from tfsdn.compat import keras
from tests import helpers


def _pruned_model(sparsity=0.5, seed=0, **kwargs):
  model = helpers.tiny_densenet(**kwargs)
  helpers.randomize_batch_norm(model, seed)
  helpers.prune_randomly(model, sparsity, seed)
  return model


def _assert_same(a, b, images, atol=1e-4):
  np.testing.assert_allclose(a(images, training=False).numpy(),
                             b(images, training=False).numpy(), atol=atol)


def test_compact_matches_pruned_and_uses_only_stock_layers(tmp_path, images):
  model = _pruned_model()
  compact = tfsdn.strip_to_compact(model, **helpers.EXACT)
  _assert_same(model, compact, images)
  assert not any(isinstance(l, tfsdn.PrunableConcatConv)
                 for l in compact.layers)
  assert compact.count_params() < 0.7 * model.count_params()
  conv = compact.get_layer("block2_layer2")
  assert isinstance(conv, keras.layers.Conv2D)
  kept = model.get_layer("block2_layer2").live_channels()
  assert conv.kernel.shape[2] == len(kept)
  assert compact.get_layer("block2_layer2_bn").gamma.shape[0] == len(kept)
  path = str(tmp_path / "compact.keras")
  compact.save(path)
  loaded = keras.models.load_model(path)  # no custom_objects
  _assert_same(compact, loaded, images, atol=1e-6)


def test_accepts_tfmot_wrapped_and_stripped_models(images):
  pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(
      helpers.tiny_densenet(), tfsdn.StagedSparsity([(2, 0.5)])))
  helpers.fit_steps(pruned, 3)
  for layer in tfsdn.prunable_layers(pruned):  # really pruned, not dense
    assert len(layer.pruned_channels()) == layer.input_channels // 2
  for model in (pruned, tfmot.sparsity.keras.strip_pruning(pruned)):
    compact = tfsdn.strip_to_compact(model, **helpers.EXACT)
    _assert_same(model, compact, images)
    assert compact.count_params() < 0.7 * model.count_params()


def test_concatenate_chains_with_maps_nobody_reads(images):
  # The shape of tf_keras.applications DenseNets: explicit Concatenate
  # layers. Nobody reads conv2_block1's 4 new maps (channels 8..11).
  model = tfsdn.make_prunable(helpers.applications_style_densenet(
      classifier_activation=None))
  helpers.randomize_batch_norm(model)
  for name in ["conv2_block2_1_conv", "pool2_conv"]:
    layer = model.get_layer(name)
    scores = np.ones(layer.input_channels, "float32")
    scores[8:12] = 0
    layer.contribution_score.assign(scores)
  compact = tfsdn.strip_to_compact(model)
  _assert_same(model, compact, images)
  names = [l.name for l in compact.layers]
  assert "conv2_block1_2_conv" not in names
  assert "conv2_block1_1_conv" not in names
  report = tfsdn.model_report(model)
  assert report.total_params == compact.count_params()


def test_nested_models_are_pruned_stripped_and_reported(images):
  inner = helpers.tiny_densenet()
  helpers.randomize_batch_norm(inner)
  outer = keras.Sequential([keras.Input((32, 32, 3)), inner,
                            keras.layers.Dense(3, name="head")])
  pruned = tfsdn.prune_dense_connections(outer,
                                         tfsdn.StagedSparsity([(2, 0.5)]))
  helpers.prune_randomly(pruned, 0.5)
  compact = tfsdn.strip_to_compact(pruned, **helpers.EXACT)
  _assert_same(tfmot.sparsity.keras.strip_pruning(pruned), compact, images)
  assert not any(isinstance(l, keras.Model) for l in compact.layers)
  assert "head" in [l.name for l in compact.layers]
  report = tfsdn.model_report(pruned)
  assert report.form == "pruned"
  assert report.total_params == compact.count_params()


@pytest.mark.parametrize("bad", [np.nan, -1.0, np.inf])
def test_invalid_scores_are_refused_with_the_layer_and_channel(bad):
  model = helpers.tiny_densenet()
  layer = model.get_layer("block1_layer2")
  scores = np.ones(layer.input_channels, "float32")
  scores[5] = bad
  layer.contribution_score.assign(scores)
  with pytest.raises(ValueError, match=r"'block1_layer2'.*channels \[5\]"):
    tfsdn.strip_to_compact(model)
  with pytest.raises(ValueError, match="block1_layer2"):
    tfsdn.model_report(model)


def test_feature_maps_nobody_reads_are_not_computed(images):
  model = helpers.tiny_densenet()
  helpers.randomize_batch_norm(model)
  # Nobody reads block1_layer1's feature maps (channels 16..19 of every
  # consumer in block 1) nor channel 3 of the stem.
  for name in ["block1_layer2", "transition1"]:
    layer = model.get_layer(name)
    scores = np.ones(layer.input_channels, "float32")
    scores[16:20] = 0
    scores[3] = 0
    layer.contribution_score.assign(scores)
  stripped = tfsdn.strip(model)
  compact = stripped.model
  _assert_same(model, compact, images)
  names = [l.name for l in compact.layers]
  assert "block1_layer1" not in names and "block1_layer1_bn" not in names
  removed = stripped.layers["block1_layer1"]  # Recorded as removed.
  assert (removed.filters_computed, removed.compact_layers) == (0, ())
  assert not removed.live.any()
  # The stem lost filter 3: only 15 filters are computed.
  assert compact.get_layer("stem_conv").filters == 15
  # Transitively: block1_layer1 read the stem too, and is gone entirely.
  assert compact.get_layer("block1_layer2").kernel.shape[2] == 15


def test_dead_producers_cascade_to_what_only_they_read(images):
  model = helpers.tiny_densenet(bottleneck=True, compression=0.5, depth=16)
  helpers.randomize_batch_norm(model)
  helpers.prune_randomly(model, 0.3)
  consumers = ["block1_layer2_bottleneck", "transition1"]
  for name in consumers:  # nobody reads block1_layer1's 4 maps (32..35)
    layer = model.get_layer(name)
    scores = layer.contribution_score.numpy()
    scores[8:12] = 0
    layer.contribution_score.assign(scores)
  compact = tfsdn.strip_to_compact(model)
  names = [l.name for l in compact.layers]
  for gone in ["block1_layer1_conv", "block1_layer1_bn",
               "block1_layer1_bottleneck"]:
    assert gone not in names
  _assert_same(model, compact, images)


def test_nothing_pruned_comes_back_equivalent(images):
  model = helpers.tiny_densenet()
  helpers.randomize_batch_norm(model)
  compact = tfsdn.strip_to_compact(model)
  _assert_same(model, compact, images, atol=1e-5)
  assert not any("gather" in l.name for l in compact.layers)


def test_densenet40_half_pruned_within_1e4(images):
  model = tfsdn.densenet.DenseNet(depth=40, growth_rate=12)
  helpers.randomize_batch_norm(model)
  helpers.prune_randomly(model, 0.5)
  compact = tfsdn.strip_to_compact(model)
  _assert_same(model, compact, images[:4])
  before = tfsdn.model_report(tfsdn.densenet.DenseNet(40, 12))
  after = tfsdn.model_report(compact)
  assert after.prunable_params <= 0.55 * before.prunable_params


def test_model_without_prunable_layers_is_rejected():
  inputs = keras.Input((8, 8, 3))
  model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
  with pytest.raises(ValueError, match="no PrunableConcatConv"):
    tfsdn.strip_to_compact(model)


def _inbound(model, name):
  """The layer that feeds layer `name` of `model`."""
  return model.get_layer(name).inbound_nodes[0].inbound_layers


@pytest.mark.parametrize("channel_reads", ["slice", "gather"])
def test_pool_first_pools_before_transition_convs(images, channel_reads):
  model = _pruned_model()
  plain = tfsdn.strip(model, channel_reads=channel_reads, **helpers.EXACT)
  pooled = tfsdn.strip(model, channel_reads=channel_reads, slice_cost_macs=0,
                       pool_first=True)
  _assert_same(model, pooled.model, images)
  for name in ("transition1", "transition2"):
    pool = pooled.model.get_layer(f"{name}_pool")
    assert _inbound(pooled.model, f"{name}_pool").name == f"{name}_relu"
    assert _inbound(pooled.model, name) is pool
    assert _inbound(plain.model, f"{name}_pool").name == name
  # The two transition convolutions run on a quarter of the pixels.
  macs = {r.name: r.macs for r in tfsdn.model_report(plain).rows}
  saved = sum(macs[name] * 3 / 4 for name in ("transition1", "transition2"))
  assert tfsdn.model_report(pooled).total_macs == pytest.approx(
      tfsdn.model_report(plain).total_macs - saved)
  assert pooled.model.count_params() == plain.model.count_params()


def test_pool_first_leaves_transitions_with_dropout(images):
  # Dropout between the conv and the pooling: not swapped, same function.
  model = _pruned_model(dropout_rate=0.2)
  compact = tfsdn.strip_to_compact(model, pool_first=True)
  _assert_same(model, compact, images)
  assert _inbound(compact, "transition1_drop").name == "transition1"
  assert _inbound(compact, "transition1").name == "transition1_relu"


def test_pool_first_must_be_a_bool():
  with pytest.raises(TypeError, match="pool_first.*'yes'"):
    tfsdn.strip(_pruned_model(), pool_first="yes")


def _concat_inputs(model):
  return [len(layer.input) for layer in model.layers
          if isinstance(layer, keras.layers.Concatenate)]


@pytest.mark.parametrize("channel_reads", ["slice", "split", "gather"])
@pytest.mark.parametrize("max_concat_inputs", [None, 3])
def test_reuse_concats_keeps_the_function_with_fewer_inputs(
    images, channel_reads, max_concat_inputs):
  model = _pruned_model(sparsity=0.3)
  kwargs = dict(channel_reads=channel_reads,
                max_concat_inputs=max_concat_inputs, slice_cost_macs=1e9)
  plain = tfsdn.strip(model, reuse_concats=False, **kwargs)
  reused = tfsdn.strip(model, reuse_concats=True, **kwargs)
  _assert_same(model, reused.model, images)
  # Every read is widened to whole maps, so each layer's concatenation
  # is the one before it plus the maps since: fewer inputs in all.
  assert sum(_concat_inputs(reused.model)) < sum(_concat_inputs(plain.model))
  assert tfsdn.model_report(reused).total_macs == tfsdn.model_report(
      plain).total_macs
  assert reused.model.count_params() == plain.model.count_params()


def test_reuse_concats_gives_the_dense_model_running_concatenations(images):
  # All channels live: as a stock DenseNet, each layer concatenates the
  # concatenation of the layer before and that layer's new maps.
  model = _pruned_model(sparsity=0.0)
  dense = tfsdn.strip_to_compact(model, reuse_concats=True)
  _assert_same(model, dense, images)
  assert max(_concat_inputs(dense)) == 2
  assert max(_concat_inputs(
      tfsdn.strip_to_compact(model, reuse_concats=False))) > 2


def test_reuse_concats_reorders_channels_with_exact_reads(images):
  # Exact reads (no slice cost): a layer that reads some of what an
  # earlier layer concatenated reuses it, with its BatchNormalization and
  # kernel rows in the reused order.
  model = _pruned_model(sparsity=0.5, seed=3)
  for reads in ("slice", "gather"):
    reused = tfsdn.strip(model, channel_reads=reads, reuse_concats=True)
    _assert_same(model, reused.model, images)


@pytest.mark.parametrize("kwargs", [{}, dict(reuse_concats=True,
                                             pool_first=True,
                                             channel_reads="gather")])
def test_unfused_batch_norm_keeps_the_function(images, kwargs):
  model = _pruned_model()
  fused = tfsdn.strip_to_compact(model, fused_batch_norm=True, **kwargs)
  unfused = tfsdn.strip_to_compact(model, fused_batch_norm=False, **kwargs)
  batch_norms = [layer for layer in unfused.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
  # Every one: those strip builds and the copied final one.
  assert len(batch_norms) == sum(
      isinstance(layer, keras.layers.BatchNormalization)
      for layer in fused.layers) > 1
  assert {layer.fused for layer in batch_norms} == {False}
  assert {layer.fused for layer in fused.layers
          if isinstance(layer, keras.layers.BatchNormalization)} == {True}
  _assert_same(model, unfused, images)
  _assert_same(fused, unfused, images, atol=1e-5)


def test_a_copied_batch_norm_keeps_its_fused():
  model = _pruned_model()
  copied = [layer for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)]
  assert copied  # The final one, outside every PrunableConcatConv.
  for layer in copied:
    layer.fused = False  # Not in the config, so not in a from_config copy.
  compact = tfsdn.strip_to_compact(model)
  assert all(compact.get_layer(layer.name).fused is False
             for layer in copied)


def test_fused_batch_norm_must_be_a_bool():
  with pytest.raises(TypeError, match="fused_batch_norm.*no"):
    tfsdn.strip(_pruned_model(), fused_batch_norm="no")


def test_reuse_concats_must_be_a_bool():
  with pytest.raises(TypeError, match="reuse_concats.*1"):
    tfsdn.strip(_pruned_model(), reuse_concats=1)


def test_strip_checks_the_function_and_raises_on_a_difference(monkeypatch):
  model = helpers.tiny_densenet()
  helpers.prune_randomly(model, 0.5)
  real_build = compact_lib._build

  def corrupted(*args, **kwargs):
    built, record = real_build(*args, **kwargs)
    kernel = built.get_layer("block2_layer1").kernel
    kernel.assign(kernel + 0.5)
    return built, record

  monkeypatch.setattr(compact_lib, "_build", corrupted)
  with pytest.raises(RuntimeError, match="another function"):
    tfsdn.strip(model)
  assert tfsdn.strip(model, check_function=False).pruned
  with pytest.raises(TypeError, match="check_function"):
    tfsdn.strip(model, check_function="yes")
