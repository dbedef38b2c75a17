"""Strip on Keras 3: same function, fewer channels, stock layers only."""

from unittest import mock

import hypothesis
from hypothesis import strategies as st
import keras
import numpy as np
import pytest

import tfsdn.keras3 as sdn
from tfsdn.common import channel_order


def _prune_at_random(model, fraction, seed):
  rng = np.random.default_rng(seed)
  for layer in sdn.prunable_layers(model):
    layer.contribution_score.assign(
        rng.uniform(0.1, 1.0, layer.input_channels).astype("float32"))
    layer.prune_to(int(fraction * layer.input_channels))


def _randomise_statistics(model, seed):
  # Non-trivial BatchNormalization statistics, so a wrong channel shows.
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    bns = ([layer.batch_norm] if isinstance(layer, sdn.PrunableConcatConv)
           else [layer] if isinstance(layer, keras.layers.BatchNormalization)
           else [])
    for bn in bns:
      n = bn.gamma.shape[0]
      bn.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
      bn.beta.assign(rng.normal(size=n).astype("float32"))
      bn.moving_mean.assign(rng.normal(size=n).astype("float32"))
      bn.moving_variance.assign(rng.uniform(0.5, 2, n).astype("float32"))


@pytest.mark.parametrize("kwargs", [
    dict(depth=10, growth_rate=4),
    dict(depth=16, growth_rate=4, bottleneck=True, compression=0.5),
])
def test_compact_model_computes_the_same_function(kwargs, pixels):
  model = sdn.densenet.DenseNet(**kwargs)
  _randomise_statistics(model, 0)
  _prune_at_random(model, 0.5, 1)
  stripped = sdn.strip(model, slice_cost_macs=0)  # Exact reads.
  np.testing.assert_allclose(np.asarray(stripped.model(pixels)),
                             np.asarray(model(pixels)), atol=1e-4, rtol=1e-4)
  assert sdn.dense_macs(stripped.model) < 0.75 * sdn.dense_macs(model)
  assert stripped.pruned
  assert not any(isinstance(op, sdn.PrunableConcatConv)
                 for op in stripped.model.operations)
  # Only Keras' own layers and ops.
  assert {type(op).__module__.split(".")[0] for op in
          stripped.model.operations} == {"keras"}


def test_a_layer_no_one_reads_is_removed_with_its_filters(pixels):
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  _randomise_statistics(model, 0)
  # block1_layer1's 4 maps are channels 16..19 of every later reader.
  model.get_layer("block1_layer2").contribution_score.assign(
      np.r_[np.ones(16), np.zeros(4)].astype("float32"))
  model.get_layer("transition1").contribution_score.assign(
      np.r_[np.ones(16), np.zeros(4), np.ones(4)].astype("float32"))
  stripped = sdn.strip(model)
  assert stripped.layers["block1_layer1"].filters_computed == 0
  names = [layer.name for layer in stripped.model.layers]
  assert "block1_layer1" not in names
  np.testing.assert_allclose(np.asarray(stripped.model(pixels)),
                             np.asarray(model(pixels)), atol=1e-4, rtol=1e-4)


def test_compact_model_saves_and_loads_without_tfsdn(tmp_path, pixels):
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  _prune_at_random(model, 0.4, 2)
  compact = sdn.strip(model).model
  path = str(tmp_path / "compact.keras")
  compact.save(path)
  loaded = keras.saving.load_model(path, safe_mode=True)
  np.testing.assert_allclose(np.asarray(loaded(pixels)),
                             np.asarray(compact(pixels)), atol=1e-5)


# Fewer examples off TensorFlow: JAX runs these small models op by op
# (each example builds and strips a model), and the patterns are the same.
@hypothesis.settings(
    max_examples=8 if keras.backend.backend() == "tensorflow" else 4,
    deadline=None)
@hypothesis.given(fraction=st.sampled_from([0.0, 0.3, 0.9]),
                  seed=st.integers(0, 1000))
def test_any_live_pattern_keeps_the_function(fraction, seed):
  keras.utils.set_random_seed(seed)
  model = sdn.densenet.DenseNet(depth=10, growth_rate=3,
                                input_shape=(8, 8, 3))
  _randomise_statistics(model, seed)
  _prune_at_random(model, fraction, seed)
  images = np.random.default_rng(seed).uniform(0, 255, (2, 8, 8, 3)).astype(
      "float32")
  np.testing.assert_allclose(np.asarray(sdn.strip(model).model(images)),
                             np.asarray(model(images)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs", [
    dict(depth=10, growth_rate=4, dropout_rate=0.2),
    dict(depth=16, growth_rate=4, bottleneck=True, compression=0.5,
         dropout_rate=0.2),
])
def test_a_dead_layer_behind_dropout_is_removed(kwargs, pixels):
  model = sdn.densenet.DenseNet(**kwargs)
  _randomise_statistics(model, 0)
  first = sdn.prunable_layers(model)[0]  # block1_layer1(_bottleneck)
  readers = [l for l in sdn.prunable_layers(model)
             if l.name.startswith("block1_") and l is not first]
  # Nobody reads block1_layer1's output: its 4 maps (channels 8+ of the
  # block's concatenation) are pruned in every later reader of the block.
  stem = model.get_layer("stem_conv").filters
  for layer in readers + [model.get_layer("transition1")]:
    if layer.name.endswith("_conv") and kwargs.get("bottleneck"):
      continue
    live = np.ones(layer.input_channels, "float32")
    live[stem:stem + 4] = 0
    layer.contribution_score.assign(live)
  stripped = sdn.strip(model)
  dead = "block1_layer1_bottleneck" if kwargs.get("bottleneck") else (
      "block1_layer1")
  assert stripped.layers[dead].filters_computed == 0
  np.testing.assert_allclose(np.asarray(stripped.model(pixels)),
                             np.asarray(model(pixels)), atol=1e-4, rtol=1e-4)


def _slices(model):
  return sum(1 for op in model.operations
             if "slice" in type(op).__name__.lower() or
             "getitem" in type(op).__name__.lower())


def test_slice_cost_trades_macs_for_slices_with_the_same_function(pixels):
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  _randomise_statistics(model, 2)
  _prune_at_random(model, 0.5, 2)
  exact = sdn.strip(model, slice_cost_macs=0)
  figures = [(_slices(exact.model), sdn.dense_macs(exact.model))]
  for cost in (20_000, 1e12):
    stripped = sdn.strip(model, slice_cost_macs=cost)
    np.testing.assert_allclose(np.asarray(stripped.model(pixels)),
                               np.asarray(model(pixels)), atol=1e-4,
                               rtol=1e-4)
    for name, record in stripped.layers.items():
      np.testing.assert_array_equal(record.live, exact.layers[name].live)
    figures.append((_slices(stripped.model), sdn.dense_macs(stripped.model)))
  slices, macs = zip(*figures)
  assert list(slices) == sorted(slices, reverse=True)
  assert list(macs) == sorted(macs)
  assert slices[0] > slices[-1] == 0  # Whole feature maps only.
  with pytest.raises(ValueError, match="slice_cost_macs=-1"):
    sdn.strip(model, slice_cost_macs=-1)


def _reloads_alike(model, path, pixels):
  """`model` saved to `path` loads in safe mode and computes the same."""
  model.save(str(path))
  loaded = keras.saving.load_model(str(path), safe_mode=True)
  np.testing.assert_allclose(np.asarray(loaded(pixels)),
                             np.asarray(model(pixels)), atol=1e-5)


def test_gather_reads_take_once_per_layer_with_the_same_function(
    tmp_path, pixels):
  cost = 20_000  # Merged gaps too: zero kernel rows read through the take.
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  _randomise_statistics(model, 3)
  _prune_at_random(model, 0.5, 3)
  sliced = sdn.strip(model, slice_cost_macs=cost)
  # Exact gathers (not padded to a multiple of 16), the same MACs as slices.
  with mock.patch.object(channel_order, "GATHER_CHANNEL_MULTIPLE", None):
    gathered = sdn.strip(model, slice_cost_macs=cost, channel_reads="gather")
  # Growth 12: most reads padded to a multiple of 16, with zero kernel rows.
  wide = sdn.densenet.DenseNet(depth=16, growth_rate=12)
  _randomise_statistics(wide, 4)
  _prune_at_random(wide, 0.5, 4)
  exact = sdn.strip(wide, slice_cost_macs=0)
  padded = sdn.strip(wide, channel_reads="gather")
  grown = 0
  for layer in padded.model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      read = layer.kernel.shape[2]
      wanted = exact.model.get_layer(layer.name).kernel.shape[2]
      assert read == wanted or (read % 16 == 0 and read > wanted)
      grown += read > wanted
  assert grown
  np.testing.assert_allclose(np.asarray(padded.model(pixels)),
                             np.asarray(wide(pixels)), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(gathered.model(pixels)),
                             np.asarray(model(pixels)), atol=1e-4, rtol=1e-4)
  for name, record in gathered.layers.items():
    np.testing.assert_array_equal(record.live, sliced.layers[name].live)
  assert sdn.dense_macs(gathered.model) == sdn.dense_macs(sliced.model)
  takes = sum(1 for op in gathered.model.operations
              if type(op).__name__ == "Take")
  partial = sum(1 for record in gathered.layers.values()
                if record.filters_computed and not record.live.all())
  assert 0 < takes <= partial and _slices(gathered.model) == 0
  _reloads_alike(gathered.model, tmp_path / "gathered.keras", pixels)
  with pytest.raises(ValueError, match="channel_reads='split'"):
    sdn.strip(model, channel_reads="split")


@pytest.mark.parametrize("channel_reads", ["slice", "gather"])
def test_max_concat_inputs_bounds_every_concatenation_not_the_function(
    tmp_path, pixels, channel_reads):
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  _randomise_statistics(model, 4)
  _prune_at_random(model, 0.5, 4)
  flat = sdn.strip(model, channel_reads=channel_reads)
  bounded = sdn.strip(model, channel_reads=channel_reads, max_concat_inputs=2)

  def concats(stripped):
    return [op for op in stripped.model.operations
            if isinstance(op, keras.layers.Concatenate)]

  assert max(len(op.input) for op in concats(flat)) > 2
  assert max(len(op.input) for op in concats(bounded)) == 2
  groups = [tuple(id(t) for t in op.input) for op in concats(bounded)]
  assert len(set(groups)) == len(groups)  # Each made once.
  np.testing.assert_allclose(np.asarray(bounded.model(pixels)),
                             np.asarray(flat.model(pixels)), atol=1e-5)
  assert sdn.dense_macs(bounded.model) == sdn.dense_macs(flat.model)
  _reloads_alike(bounded.model, tmp_path / "bounded.keras", pixels)
  with pytest.raises(ValueError, match="max_concat_inputs=1"):
    sdn.strip(model, max_concat_inputs=1)


@pytest.mark.parametrize("channel_reads", ["slice", "gather"])
@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_reuse_concats_starts_from_earlier_concatenations(
    tmp_path, pixels, channel_reads, fraction):
  # Whole maps (fraction 0, or gaps merged by a large slice cost): each
  # layer's concatenation is the one before plus new maps, as in a stock
  # DenseNet. The same function, with fewer concatenation inputs.
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  _randomise_statistics(model, 5)
  _prune_at_random(model, fraction, 5)
  kwargs = dict(channel_reads=channel_reads, slice_cost_macs=1e12)
  plain = sdn.strip(model, reuse_concats=False, **kwargs)
  reused = sdn.strip(model, reuse_concats=True, **kwargs)
  np.testing.assert_allclose(np.asarray(reused.model(pixels)),
                             np.asarray(model(pixels)), atol=1e-4, rtol=1e-4)

  def inputs(stripped):
    return [len(op.input) for op in stripped.model.operations
            if isinstance(op, keras.layers.Concatenate)]

  assert sum(inputs(reused)) < sum(inputs(plain))
  if fraction == 0.0:
    assert max(inputs(reused)) == 2 < max(inputs(plain))
  assert sdn.dense_macs(reused.model) == sdn.dense_macs(plain.model)
  _reloads_alike(reused.model, tmp_path / "reused.keras", pixels)
  with pytest.raises(TypeError, match="reuse_concats"):
    sdn.strip(model, reuse_concats="yes")
