"""Keras 3 strip and report agree with the tfmot path's on what they keep.

Feature extractors keep their output channels in order, nested models are
inlined, and a removed layer is recorded as the tfmot path records it.
"""

import importlib

import keras
import numpy as np
import pytest

import tfsdn.keras3 as sdn
from tests.keras3.test_strip import _prune_at_random
from tests.keras3.test_strip import _randomise_statistics


def _pruned_densenet(seed=1, **kwargs):
  model = sdn.densenet.DenseNet(**(kwargs or dict(depth=10, growth_rate=4)))
  _randomise_statistics(model, seed)
  _prune_at_random(model, 0.5, seed)
  return model


def _assert_same_function(stripped, model, pixels):
  np.testing.assert_allclose(np.asarray(stripped.model(pixels)),
                             np.asarray(model(pixels)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("output", ["final_relu", "avg_pool"])
def test_a_feature_extractor_keeps_its_output_channels_in_order(
    output, pixels):
  model = _pruned_densenet()
  features = keras.Model(model.input, model.get_layer(output).output)
  stripped = sdn.strip(features)
  assert stripped.pruned
  _assert_same_function(stripped, features, pixels)


def _backbone_and_head(seed=1):
  model = _pruned_densenet(seed)
  backbone = keras.Model(model.input, model.get_layer("avg_pool").output,
                         name="backbone")
  head = keras.layers.Dense(10, name="head")
  return backbone, head


@pytest.mark.parametrize("nesting", ["functional", "sequential"])
def test_a_nested_backbone_is_inlined_by_strip_and_report(nesting, pixels):
  backbone, head = _backbone_and_head()
  if nesting == "functional":
    inputs = keras.Input((32, 32, 3), name="pixels")
    model = keras.Model(inputs, head(backbone(inputs)), name="classifier")
  else:
    model = keras.Sequential([keras.Input((32, 32, 3)), backbone, head],
                             name="classifier")
  stripped = sdn.strip(model)
  assert stripped.pruned
  assert set(stripped.layers) == {
      layer.name for layer in sdn.prunable_layers(backbone)}
  assert not any(isinstance(op, (sdn.PrunableConcatConv, keras.Model))
                 for op in stripped.model.operations)
  _assert_same_function(stripped, model, pixels)
  # Counted as the same model built flat.
  flat = keras.Model(backbone.input, head(backbone.output))
  report, flat_report = sdn.model_report(model), sdn.model_report(flat)
  assert report.form == "pruned"
  assert report.total_macs == flat_report.total_macs
  assert report.total_params == flat_report.total_params
  assert [r.name for r in report.rows] == [r.name for r in flat_report.rows]


def _removed_first_layer():
  """A DenseNet whose block1_layer1 no one reads: removed by strip."""
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  _randomise_statistics(model, 0)
  # block1_layer1's 4 maps are channels 16..19 of every later reader.
  model.get_layer("block1_layer2").contribution_score.assign(
      np.r_[np.ones(16), np.zeros(4)].astype("float32"))
  model.get_layer("transition1").contribution_score.assign(
      np.r_[np.ones(16), np.zeros(4), np.ones(4)].astype("float32"))
  return model


def test_a_removed_layer_records_no_live_input_and_no_filter():
  record = sdn.strip(_removed_first_layer()).layers["block1_layer1"]
  assert len(record.offered) == 16
  assert not record.live.any()
  assert (record.filters, record.filters_computed) == (4, 0)
  assert record.compact_layers == ()


def _fields(stripped):
  return {name: (record.offered, record.live.tolist(), record.filters,
                 record.filters_computed, tuple(record.compact_layers),
                 record.prunes)
          for name, record in stripped.layers.items()}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="moves the model to tf_keras")
@pytest.mark.parametrize("case", ["removed", "bottleneck"])
def test_both_paths_record_the_same(case):
  tfsdn = pytest.importorskip("tfsdn")
  model = _removed_first_layer() if case == "removed" else _pruned_densenet(
      2, depth=16, growth_rate=4, bottleneck=True, compression=0.5,
      dropout_rate=0.2)
  ours, theirs = sdn.strip(model), tfsdn.strip(sdn.to_tf_keras(model))
  assert _fields(ours) == _fields(theirs)
  assert ours.source_channels == theirs.source_channels
  report, expected = sdn.model_report(ours), tfsdn.model_report(theirs)
  assert [(b.consumers, b.sources) for b in report.blocks] == [
      (b.consumers, b.sources) for b in expected.blocks]
  for block, other in zip(report.blocks, expected.blocks):
    np.testing.assert_array_equal(block.matrix, other.matrix)


def test_strip_checks_the_function_and_raises_on_a_difference(monkeypatch):
  strip_lib = importlib.import_module("tfsdn.keras3.strip")
  model = _pruned_densenet()
  real_strip_conv = strip_lib._strip_concat_conv

  def corrupted(layer, *args, **kwargs):
    record = real_strip_conv(layer, *args, **kwargs)
    if layer.name == "block2_layer1":
      layer.conv.kernel.assign(layer.conv.kernel + 0.5)  # Model changed
    return record                                        # after its copy.

  monkeypatch.setattr(strip_lib, "_strip_concat_conv", corrupted)
  with pytest.raises(RuntimeError, match="another function"):
    sdn.strip(model)
  monkeypatch.undo()
  assert sdn.strip(model, check_function=False).pruned
  with pytest.raises(TypeError, match="check_function"):
    sdn.strip(model, check_function="yes")
