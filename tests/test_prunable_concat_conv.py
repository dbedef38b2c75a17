import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import tfsdn
from tfsdn.compat import keras


def _features(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(4, 6, 6, c)).astype("float32") for c in (3, 5)]


def _layer(**kwargs):
  layer = tfsdn.PrunableConcatConv(4, 3, **kwargs)
  layer(_features())
  return layer


def test_concatenates_list_inputs_and_masks_pruned_channels():
  layer = _layer()
  features = _features()
  scores = np.ones(8, "float32")
  scores[[1, 6]] = 0
  layer.contribution_score.assign(scores)
  base = layer(features, training=False).numpy()
  perturbed = [f.copy() for f in features]
  perturbed[0][..., 1] += 100.0
  perturbed[1][..., 3] -= 50.0  # channel 6 of the concatenation
  np.testing.assert_array_equal(layer(perturbed, training=False), base)
  perturbed[1][..., 0] += 1.0  # a live channel
  assert np.abs(layer(perturbed, training=False) - base).max() > 1e-3
  np.testing.assert_array_equal(layer.live_channels(), [0, 2, 3, 4, 5, 7])
  np.testing.assert_array_equal(layer.pruned_channels(), [1, 6])
  assert layer.sparsity() == pytest.approx(0.25)


def test_single_tensor_input():
  layer = tfsdn.PrunableConcatConv(2, 1)
  out = layer(np.ones((1, 4, 4, 3), "float32"))
  assert out.shape == (1, 4, 4, 2)
  assert layer.input_channels == 3


@pytest.mark.parametrize("criterion", ["expected_l1", "weight_l1", "bn_gamma",
                                       "random"])
def test_training_updates_scores_normalised_and_pruned_stay_zero(criterion):
  layer = _layer(criterion=criterion, score_momentum=0.5)
  scores = np.ones(8, "float32")
  scores[[0, 5]] = 0
  layer.contribution_score.assign(scores)
  for seed in range(3):
    layer(_features(seed), training=True)
  assert layer.update_scores()
  updated = layer.contribution_score.numpy()
  assert updated[0] == 0 and updated[5] == 0
  live = np.delete(updated, [0, 5])
  assert (live > 0).all()
  assert live.mean() == pytest.approx(1.0, rel=1e-5)


def test_expected_l1_scores_follow_the_definition():
  layer = _layer(score_momentum=0.0)
  features = _features(4)
  layer(features, training=True)
  layer.update_scores()
  x = tf.nn.relu(layer.batch_norm(np.concatenate(features, -1),
                                  training=True)).numpy()
  raw = x.mean(axis=(0, 1, 2)) * np.abs(layer.conv.kernel.numpy()).sum(
      axis=(0, 1, 3))
  np.testing.assert_allclose(layer.input_abs_mean.numpy(),
                             x.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(layer.contribution_score.numpy(), raw / raw.mean(),
                             rtol=1e-3)


def test_training_measures_statistics_and_only_update_scores_scores():
  layer = _layer()
  before = layer.contribution_score.numpy().copy()
  layer(_features(2), training=False)  # Inference measures nothing.
  assert not layer.input_abs_mean.numpy().any()
  layer(_features(2), training=True)  # Training measures, scores nothing.
  assert layer.input_abs_mean.numpy().any()
  np.testing.assert_array_equal(layer.contribution_score.numpy(), before)
  layer.measuring.assign(0.0)  # After the last stage: no more measuring.
  abs_mean = layer.input_abs_mean.numpy().copy()
  layer(_features(3), training=True)
  np.testing.assert_array_equal(layer.input_abs_mean.numpy(), abs_mean)
  assert layer.update_scores()
  assert not np.array_equal(layer.contribution_score.numpy(), before)


def test_get_prunable_weights_is_exactly_the_score_variable():
  layer = _layer()
  assert layer.get_prunable_weights() == [layer.contribution_score]
  assert isinstance(layer, tfmot.sparsity.keras.PrunableLayer)
  assert layer.contribution_score.dtype == tf.float32
  assert not layer.contribution_score.trainable


def test_group_lasso_adds_the_group_norm_loss():
  layer = _layer(group_lasso=0.01)
  kernel = layer.conv.kernel.numpy()
  expected = 0.01 * np.sqrt((kernel ** 2).sum(axis=(0, 1, 3))).sum()
  assert len(layer.losses) == 1
  assert float(layer.losses[0]) == pytest.approx(expected, rel=1e-4)
  assert not _layer().losses


def test_config_round_trip_is_exact():
  layer = tfsdn.PrunableConcatConv(
      6, (3, 1), strides=2, padding="valid",
      kernel_regularizer=keras.regularizers.l2(1e-4), criterion="bn_gamma",
      score_momentum=0.8, group_lasso=0.001, name="pcc")
  config = layer.get_config()
  clone = tfsdn.PrunableConcatConv.from_config(config)
  assert clone.get_config() == config
  json_config = keras.layers.serialize(layer)
  assert keras.layers.deserialize(json_config).get_config() == config


def test_model_saves_and_loads_without_custom_objects(tmp_path):
  inputs = [keras.Input((6, 6, 3)), keras.Input((6, 6, 5))]
  model = keras.Model(inputs, tfsdn.PrunableConcatConv(4, name="pcc")(inputs))
  scores = np.linspace(0, 1, 8).astype("float32")
  model.get_layer("pcc").contribution_score.assign(scores)
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(
      loaded.get_layer("pcc").contribution_score.numpy(), scores)
  np.testing.assert_allclose(loaded(_features()), model(_features()),
                             atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (dict(filters=0), "filters=0"),
    (dict(filters=4, criterion="l2"), "criterion='l2'"),
    (dict(filters=4, score_momentum=1.0), "score_momentum=1.0"),
    (dict(filters=4, group_lasso=-1.0), "group_lasso=-1.0"),
    (dict(filters=4, kernel_size=0), "kernel_size=(0, 0)"),
    (dict(filters=4, padding="full"), "padding='full'"),
    (dict(filters=True), "filters=True"),
    (dict(filters=4, group_lasso=float("nan")), "group_lasso=nan"),
    (dict(filters=4, group_lasso=float("inf")), "group_lasso=inf"),
    (dict(filters=4, score_momentum="0.9"), "score_momentum='0.9'"),
    (dict(filters=4, bn_epsilon=-1.0), "bn_epsilon=-1.0"),
    (dict(filters=4, bn_momentum=5.0), "bn_momentum=5.0"),
])
def test_bad_arguments_name_the_value(bad, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(
      ")", r"\)")):
    tfsdn.PrunableConcatConv(**bad)


def test_rejects_non_nhwc_input():
  with pytest.raises(ValueError, match="NHWC"):
    tfsdn.PrunableConcatConv(4)(np.ones((2, 3), "float32"))


def test_inputs_of_different_sizes_are_refused_naming_the_shapes():
  big, small = keras.Input((8, 8, 3)), keras.Input((4, 4, 3))
  with pytest.raises(ValueError, match=r"heights differ.*\(None, 8, 8, 3\), "
                     r"\(None, 4, 4, 3\)"):
    tfsdn.PrunableConcatConv(4)([big, small])
  layer = tfsdn.PrunableConcatConv(4)
  layer.build([(None, None, None, 3)] * 2)  # Sizes unknown when built.
  with pytest.raises(ValueError, match=r"widths differ.*\(2, 6, 6, 3\), "
                     r"\(2, 6, 4, 3\)"):
    layer([np.zeros((2, 6, 6, 3), "float32"),
           np.zeros((2, 6, 4, 3), "float32")])


def test_keras3_layer_gets_type_error_with_the_fix():
  with pytest.raises(TypeError, match="TF_USE_LEGACY_KERAS=1"):
    tfsdn.compat.require_tf_keras_layer(keras3.layers.Dense(2))


@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("criterion", ["expected_l1", "weight_l1"])
def test_a_non_finite_batch_changes_no_score_and_kills_no_layer(bad,
                                                                criterion):
  layer = _layer(criterion=criterion)
  scores = np.linspace(0.5, 1.5, 8).astype("float32")
  scores[2] = 0
  layer.contribution_score.assign(scores)
  layer(_features(0), training=True)
  layer.update_scores()
  before = layer.contribution_score.numpy().copy()
  abs_mean = layer.input_abs_mean.numpy().copy()
  features = _features(1)
  features[0][0, 0, 0, 1] = bad
  layer(features, training=True)
  layer.update_scores()
  np.testing.assert_array_equal(layer.contribution_score.numpy(), before)
  np.testing.assert_array_equal(layer.input_abs_mean.numpy(), abs_mean)
  layer.conv.kernel.assign(layer.conv.kernel * np.linspace(
      0.5, 2.0, 8).reshape(1, 1, 8, 1))
  layer(_features(2), training=True)  # The next finite batch updates again.
  layer.update_scores()
  after = layer.contribution_score.numpy()
  assert np.isfinite(after).all() and not np.array_equal(after, before)
  assert layer.pruned_channels().tolist() == [2]
  assert layer.sparsity() == pytest.approx(1 / 8)


def test_live_scores_are_pairwise_distinct_after_training_even_when_tied():
  # Five of eight channels are zero after ReLU (beta far below 0): their
  # raw scores tie at the floor, yet every live score must differ.
  layer = _layer(batch_norm_trainable=False)
  layer.batch_norm.beta.assign([0, 0, 0, -100, -100, -100, -100, -100])
  layer(_features(0), training=True)
  layer.update_scores()
  scores = layer.contribution_score.numpy()
  assert (scores > 0).all() and len(set(scores.tolist())) == 8
  assert np.argsort(scores)[:5].tolist() == [3, 4, 5, 6, 7]


def test_frozen_parts_and_synchronized_batch_norm_round_trip():
  layer = _layer(batch_norm_trainable=False, conv_trainable=False,
                 bn_synchronized=True)
  layer(_features(0))
  assert not layer.batch_norm.trainable and not layer.conv.trainable
  assert layer.batch_norm.synchronized
  assert layer.trainable_weights == []
  copy = tfsdn.PrunableConcatConv.from_config(layer.get_config())
  assert copy.get_config() == layer.get_config()
  # A frozen BN normalises with its moving statistics even in training.
  moving = layer.batch_norm.moving_mean.numpy().copy()
  layer.batch_norm.moving_mean.assign(moving + 3.0)
  features = _features(3)
  np.testing.assert_allclose(layer(features, training=True),
                             layer(features, training=False), atol=1e-5)
