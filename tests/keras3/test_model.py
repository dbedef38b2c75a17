"""The Keras 3 layer and builders: parameters, config, statistics."""

import keras
import numpy as np
import pytest

import tfsdn.keras3 as sdn


def _trainable(model):
  return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("kwargs, trainable, prunable", [
    (dict(depth=40, growth_rate=12), 1_019_722, 36 + 2),
    (dict(depth=100, growth_rate=12, bottleneck=True, compression=0.5,
          num_classes=100), 800_032, 48 + 48 + 2),
])
def test_builders_pin_the_tf_keras_parameter_counts(kwargs, trainable,
                                                    prunable):
  # The same figures tests/test_densenet.py pins for the tf_keras builders.
  if keras.backend.backend() != "tensorflow":
    # One builder code for every backend: pinned once, where building the
    # 1M-parameter net takes seconds (JAX initialises op by op: ~80 s).
    pytest.skip("pinned in the TensorFlow-backend run")
  model = sdn.densenet.DenseNet(**kwargs)
  assert _trainable(model) == trainable
  assert len(sdn.prunable_layers(model)) == prunable


def test_layer_names_match_the_tf_keras_builder():
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  names = [layer.name for layer in model.layers]
  assert names[:4] == ["image", "normalize", "stem_conv", "block1_layer1"]
  assert "transition1_pool" in names and names[-1] == "logits"


def test_config_round_trip_and_keras_file(tmp_path, pixels):
  layer = sdn.PrunableConcatConv(6, 3, criterion="weight_l1",
                                 score_momentum=0.5, group_lasso=1e-3,
                                 name="c")
  clone = sdn.PrunableConcatConv.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  model.get_layer("block1_layer2").prune_to(3)
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.get_layer("block1_layer2").pruned_channels().tolist() == (
      model.get_layer("block1_layer2").pruned_channels().tolist())
  np.testing.assert_allclose(np.asarray(loaded(pixels)),
                             np.asarray(model(pixels)), atol=1e-5)


def test_bad_arguments_are_refused_with_the_value():
  with pytest.raises(ValueError, match="criterion='l3'"):
    sdn.PrunableConcatConv(4, criterion="l3")
  with pytest.raises(ValueError, match="padding='full'"):
    sdn.PrunableConcatConv(4, padding="full")
  with pytest.raises(ValueError, match="score_momentum"):
    sdn.PrunableConcatConv(4, score_momentum=1.0)


def test_inputs_of_different_sizes_are_refused_naming_the_shapes():
  big, small = keras.Input((8, 8, 3)), keras.Input((4, 4, 3))
  with pytest.raises(ValueError, match=r"heights differ.*\(None, 8, 8, 3\), "
                     r"\(None, 4, 4, 3\)"):
    sdn.PrunableConcatConv(4)([big, small])
  layer = sdn.PrunableConcatConv(4)
  layer.build([(None, None, None, 3)] * 2)  # Sizes unknown when built.
  with pytest.raises(ValueError, match=r"widths differ.*\(2, 6, 6, 3\), "
                     r"\(2, 6, 4, 3\)"):
    layer([np.zeros((2, 6, 6, 3), "float32"),
           np.zeros((2, 6, 4, 3), "float32")])


def test_report_of_a_model_of_any_image_size_asks_for_the_size():
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4,
                                input_shape=(None, None, 3))
  with pytest.raises(ValueError, match=r"unknown size.*input_size="):
    sdn.model_report(model)
  expected = sdn.model_report(sdn.densenet.DenseNet(depth=10, growth_rate=4))
  report = sdn.model_report(model, input_size=(32, 32))
  assert (report.total_macs, report.total_params) == (
      expected.total_macs, expected.total_params)


def test_statistics_move_in_training_only_and_skip_non_finite_batches():
  layer = sdn.PrunableConcatConv(4, 1, score_momentum=0.5)
  x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
  layer([x, x], training=False)
  np.testing.assert_array_equal(layer.input_abs_mean.numpy(), 0)
  layer([x, x], training=True)
  after = layer.input_abs_mean.numpy()
  assert (after > 0).all()
  bad = x.copy()
  bad[0, 0, 0, 0] = np.nan
  layer([bad, x], training=True)
  np.testing.assert_array_equal(layer.input_abs_mean.numpy(), after)
  layer.measuring.assign(0.0)
  layer([x * 5, x], training=True)
  np.testing.assert_array_equal(layer.input_abs_mean.numpy(), after)


def test_pruned_inputs_do_not_reach_the_output():
  layer = sdn.PrunableConcatConv(4, 1, name="c")
  x = np.random.default_rng(0).normal(size=(2, 4, 4, 6)).astype("float32")
  layer(x)
  layer.contribution_score.assign(np.arange(1, 7, dtype="float32"))
  layer.prune_to(2)  # the two lowest: channels 0 and 1
  assert layer.pruned_channels().tolist() == [0, 1]
  changed = x.copy()
  changed[..., :2] += 100.0
  np.testing.assert_allclose(np.asarray(layer(changed)), np.asarray(layer(x)),
                             atol=1e-5)
  layer.prune_to(1)  # a pruned channel stays pruned
  assert layer.pruned_channels().tolist() == [0, 1]


def test_update_scores_are_distinct_mean_one_and_keep_pruned_at_zero():
  layer = sdn.PrunableConcatConv(4, 1, criterion="weight_l1")
  layer(np.ones((1, 2, 2, 8), "float32"))
  kernel = np.ones((1, 1, 8, 4), "float32")  # every channel ties
  layer.conv.kernel.assign(kernel)
  layer.contribution_score.assign(np.r_[0.0, np.ones(7)].astype("float32"))
  assert layer.update_scores()
  scores = layer.contribution_score.numpy()
  assert scores[0] == 0
  assert len(set(scores[1:].tolist())) == 7
  np.testing.assert_allclose(scores[1:].mean(), 1.0, rtol=1e-5)
  layer.conv.kernel.assign(kernel * np.inf)
  assert not layer.update_scores()
  np.testing.assert_array_equal(layer.contribution_score.numpy(), scores)


def test_tf_keras_models_get_a_type_error_naming_the_tfmot_path():
  tf_keras = pytest.importorskip("tf_keras")
  model = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])
  with pytest.raises(TypeError, match="tfmot path"):
    sdn.strip(model)


@pytest.mark.parametrize("kwargs", [
    dict(depth=10, growth_rate=4),
    dict(depth=16, growth_rate=4, bottleneck=True, compression=0.5),
])
def test_every_weight_has_the_tf_keras_shape_on_this_backend(kwargs):
  tfsdn = pytest.importorskip("tfsdn")
  ours = sdn.densenet.DenseNet(**kwargs)
  theirs = tfsdn.densenet.DenseNet(**kwargs)
  assert [l.name for l in ours.layers] == [l.name for l in theirs.layers]
  for mine, other in zip(ours.layers, theirs.layers):
    assert sorted(tuple(w.shape) for w in mine.weights) == sorted(
        tuple(w.shape) for w in other.weights), mine.name
