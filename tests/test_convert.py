"""make_prunable on tf_keras.applications DenseNets and hand-built models."""

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

import tfsdn
from tfsdn import testing
from tests import helpers
from tfsdn.compat import keras

# (builder, PrunableConcatConv count): per dense layer the 1x1 conv (its BN
# reads the block's concatenation, or the block input for the first layer)
# and the 3x3 conv (its BN reads the 1x1 conv: the bottleneck width), plus 3
# transitions.
APPLICATIONS = {
    "DenseNet121": (tf_keras.applications.DenseNet121, 2 * 58 + 3),
    "DenseNet169": (tf_keras.applications.DenseNet169, 2 * 82 + 3),
    "DenseNet201": (tf_keras.applications.DenseNet201, 2 * 98 + 3),
}


def _images(shape, count=2, seed=0):
  return np.random.default_rng(seed).uniform(
      0, 255, (count,) + shape).astype("float32")


def _max_diff(a, b, x):
  return float(np.abs(a(x, training=False) - b(x, training=False)).max())


def _count_prunable(model):
  return sum(isinstance(l, tfsdn.PrunableConcatConv) for l in model.layers)


@pytest.mark.parametrize("shape", [(64, 64, 3), (224, 224, 3)])
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_applications_densenet_keeps_its_function(name, shape):
  builder, count = APPLICATIONS[name]
  original = builder(weights=None, input_shape=shape, classes=10,
                     classifier_activation=None)
  helpers.randomize_batch_norm(original)
  converted = tfsdn.make_prunable(original)
  assert _count_prunable(converted) == count
  assert converted.count_params() == original.count_params() + sum(
      2 * l.input_channels + 1  # scores, statistics, the measuring flag
      for l in tfsdn.prunable_layers(converted))
  # Logits (no softmax), so a difference cannot hide in a saturated output.
  assert _max_diff(original, converted, _images(shape)) <= 1e-5
  plan = tfsdn.conversion_plan(original)
  assert len(plan.converted) == count
  # The stem's BN feeds a ZeroPadding2D, the last one avg_pool.
  assert [s.batch_norm for s in plan.skipped] == ["conv1/bn", "bn"]
  # Prune half of every layer's inputs, strip, compare: DenseNet121 only,
  # read through one gather per layer (its ~3,000 slices take 40 s to
  # build in tf_keras; slices of a converted model are checked in
  # test_converted_model_goes_through_the_whole_flow). DenseNet169 and 201
  # are the same blocks, more of them; their conversion is checked above
  # at both sizes.
  if shape[0] == 64 and name == "DenseNet121":
    testing.prune_at_random(converted, 0.5, seed=1)
    compact = tfsdn.strip_to_compact(converted, channel_reads="gather",
                                     **helpers.EXACT)  # As reported.
    assert _max_diff(converted, compact, _images(shape, seed=2)) <= 1e-4
    assert compact.count_params() < original.count_params()
    report = tfsdn.model_report(converted)
    assert report.total_params == tfsdn.model_report(compact).total_params


def _hand_built():
  """Two concatenations, one read twice, one conv with a bias."""
  inputs = keras.Input((16, 16, 3), name="images")
  stem = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
  x = keras.layers.BatchNormalization(name="l1_bn")(stem)
  x = keras.layers.ReLU(name="l1_relu")(x)
  new1 = keras.layers.Conv2D(4, 3, padding="same", use_bias=False,
                             name="l1_conv")(x)
  cat1 = keras.layers.Concatenate(name="cat1")([stem, new1])
  # cat1 feeds two consumers: l2 (convertible) and side (has a bias).
  x = keras.layers.BatchNormalization(name="l2_bn")(cat1)
  x = keras.layers.Activation("relu", name="l2_relu")(x)
  new2 = keras.layers.Conv2D(4, 3, padding="same", use_bias=False,
                             name="l2_conv")(x)
  x = keras.layers.BatchNormalization(name="side_bn")(cat1)
  x = keras.layers.ReLU(name="side_relu")(x)
  side = keras.layers.Conv2D(4, 1, use_bias=True, name="side_conv")(x)
  cat2 = keras.layers.Concatenate(name="cat2")([cat1, new2, side])
  x = keras.layers.BatchNormalization(name="t_bn")(cat2)
  x = keras.layers.ReLU(name="t_relu")(x)
  x = keras.layers.Conv2D(8, 1, use_bias=False, name="transition")(x)
  x = keras.layers.AveragePooling2D(2, name="pool")(x)
  x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
  return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x),
                     name="hand_built")


def test_hand_built_model_converts_and_reports_what_it_left_alone():
  original = _hand_built()
  helpers.randomize_batch_norm(original)
  converted = tfsdn.make_prunable(original, criterion="weight_l1")
  names = {l.name for l in converted.layers}
  prunable = {l.name: l for l in tfsdn.prunable_layers(converted)}
  # l1's BN reads the stem conv (not a Concatenate): converted as well.
  assert set(prunable) == {"l1_conv", "l2_conv", "transition"}
  assert prunable["l2_conv"].criterion == "weight_l1"
  # Everything not converted is still there under its own name.
  assert {"stem", "cat1", "cat2", "side_bn", "side_relu", "side_conv", "pool",
          "gap", "logits"} <= names
  assert not {"l1_bn", "l1_relu", "l2_bn", "l2_relu", "t_bn", "t_relu"} & (
      names)
  x = _images((16, 16, 3), count=4)
  assert _max_diff(original, converted, x) <= 1e-5
  plan = tfsdn.conversion_plan(original)
  reasons = {s.batch_norm: s.reason for s in plan.skipped}
  assert set(reasons) == {"side_bn"}
  assert "side_conv" in reasons["side_bn"]
  assert "use_bias=True" in reasons["side_bn"]
  assert "side_bn" in str(plan) and "l2_conv" in str(plan)
  # The original is untouched and does not share weights with the copy.
  converted.get_layer("logits").kernel.assign_add(tf.ones((8, 10)))
  assert _max_diff(original, converted, x) > 1e-3


def test_batch_norm_with_a_second_reader_is_skipped():
  inputs = keras.Input((8, 8, 4))
  a = keras.layers.Conv2D(4, 1, name="a")(inputs)
  cat = keras.layers.Concatenate(name="cat")([inputs, a])
  normed = keras.layers.BatchNormalization(name="bn")(cat)
  x = keras.layers.ReLU(name="relu")(normed)
  x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(x)
  x = keras.layers.Concatenate(name="out")([
      keras.layers.GlobalAveragePooling2D()(x),
      keras.layers.GlobalAveragePooling2D()(normed)])
  model = keras.Model(inputs, x)
  plan = tfsdn.conversion_plan(model)
  assert not plan.converted
  assert "feeds 2 layers" in plan.skipped[0].reason
  with pytest.raises(ValueError, match="no BatchNormalization -> ReLU"
                     r"(.|\n)*feeds 2 layers"):
    tfsdn.make_prunable(model)


@pytest.mark.parametrize("kwargs, message", [
    (dict(criterion="l3"), "criterion='l3'"),
    (dict(score_momentum=1.5), "score_momentum=1.5"),
    (dict(group_lasso=float("nan")), "group_lasso=nan"),
])
def test_bad_layer_arguments_are_refused_before_rebuilding(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tfsdn.make_prunable(_hand_built(), **kwargs)


def test_nothing_to_convert_subclassed_and_keras3_models_are_refused():
  inputs = keras.Input((4,))
  with pytest.raises(ValueError, match="'plain' has no BatchNormalization"):
    tfsdn.make_prunable(keras.Model(inputs, keras.layers.Dense(2)(inputs),
                                    name="plain"))

  class Sub(keras.Model):

    def call(self, x):
      return x

  with pytest.raises(TypeError, match="functional and Sequential"):
    tfsdn.make_prunable(Sub())
  inputs3 = keras3.Input((4,))
  with pytest.raises(TypeError, match="TF_USE_LEGACY_KERAS"):
    tfsdn.make_prunable(keras3.Model(inputs3, keras3.layers.Dense(2)(inputs3)))


def test_converted_model_goes_through_the_whole_flow(tmp_path):
  original = helpers.applications_style_densenet()
  model = tfsdn.make_prunable(original)
  # Per dense layer its 1x1 conv (connections; the first of a block reads
  # the block input) and its 3x3 conv (the bottleneck width); a transition.
  assert [l.name for l in tfsdn.prunable_layers(model)] == [
      "conv2_block1_1_conv", "conv2_block1_2_conv", "conv2_block2_1_conv",
      "conv2_block2_2_conv", "pool2_conv", "conv3_block1_1_conv",
      "conv3_block1_2_conv", "conv3_block2_1_conv", "conv3_block2_2_conv",
      "conv3_block3_1_conv", "conv3_block3_2_conv"]
  pruned = tfsdn.prune_dense_connections(
      model, tfsdn.StagedSparsity([(2, 0.25), (4, 0.5)]))
  pruned.compile(optimizer=keras.optimizers.SGD(0.01),
                 loss=keras.losses.SparseCategoricalCrossentropy())
  x, y = helpers.random_data(48)
  pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
             callbacks=[tfmot.sparsity.keras.UpdatePruningStep(),
                        tfsdn.UpdateScores()])
  stripped = tfmot.sparsity.keras.strip_pruning(pruned)
  for layer in tfsdn.prunable_layers(stripped):
    assert len(layer.pruned_channels()) == round(0.5 * layer.input_channels)
  compact = tfsdn.strip_to_compact(stripped)
  assert not any(isinstance(l, tfsdn.PrunableConcatConv)
                 for l in compact.layers)
  assert _max_diff(stripped, compact, x[:8]) <= 1e-4
  assert compact.count_params() < original.count_params()
  path = tfsdn.export_saved_model(compact, str(tmp_path / "export"))
  served = tf.saved_model.load(path).signatures["serving_default"](
      images=tf.constant(x[:8]))
  np.testing.assert_allclose(served["probabilities"],
                             stripped(x[:8], training=False), atol=1e-5)


def test_frozen_layers_stay_frozen_and_synchronized_is_kept():
  original = helpers.applications_style_densenet(classifier_activation=None)
  helpers.randomize_batch_norm(original)
  original.get_layer("conv2_block2_0_bn").trainable = False
  original.get_layer("conv2_block2_1_conv").trainable = False
  original.get_layer("pool2_conv").trainable = False
  original.get_layer("conv1/conv").trainable = False
  converted = tfsdn.make_prunable(original)
  frozen_bn = converted.get_layer("conv2_block2_1_conv")
  assert not frozen_bn.batch_norm.trainable and not frozen_bn.conv.trainable
  transition = converted.get_layer("pool2_conv")
  assert transition.batch_norm.trainable and not transition.conv.trainable
  assert not converted.get_layer("conv1/conv").trainable
  assert len(converted.trainable_weights) == len(original.trainable_weights)
  # A frozen BN ran in inference mode in training: it still does.
  x = _images((32, 32, 3), count=4)
  np.testing.assert_allclose(
      frozen_bn.batch_norm(np.ones((2, 4, 4, 12), "float32"), training=True),
      frozen_bn.batch_norm(np.ones((2, 4, 4, 12), "float32"), training=False))
  assert _max_diff(original, converted, x) <= 1e-5
  # The frozen state survives prune_dense_connections and a config trip.
  pruned = tfsdn.prune_dense_connections(
      converted, tfsdn.StagedSparsity([(2, 0.5)]))
  layer = [l for l in tfsdn.prunable_layers(pruned)
           if l.name == "conv2_block2_1_conv"][0]
  assert not layer.batch_norm.trainable and not layer.conv.trainable

  inputs = keras.Input((8, 8, 4))
  cat = keras.layers.Concatenate()([inputs, inputs])
  x = keras.layers.BatchNormalization(synchronized=True, name="bn")(cat)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")(x)
  converted = tfsdn.make_prunable(keras.Model(inputs, x))
  assert converted.get_layer("conv").batch_norm.synchronized


@pytest.mark.parametrize("bn_kwargs, conv_kwargs, reason", [
    (dict(renorm=True), {}, "renorm=True"),
    (dict(virtual_batch_size=2), {}, "virtual_batch_size=2"),
    (dict(gamma_regularizer="l2"), {}, "gamma_regularizer"),
    (dict(beta_constraint="non_neg"), {}, "beta_constraint"),
    ({}, dict(kernel_constraint="max_norm"), "kernel_constraint"),
])
def test_batch_norm_and_conv_options_a_prunable_layer_would_drop_are_skipped(
    bn_kwargs, conv_kwargs, reason):
  inputs = keras.Input((8, 8, 4))
  cat = keras.layers.Concatenate()([inputs, inputs])
  x = keras.layers.BatchNormalization(name="bn", **bn_kwargs)(cat)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Conv2D(2, 1, use_bias=False, name="conv", **conv_kwargs)(x)
  plan = tfsdn.conversion_plan(keras.Model(inputs, x))
  assert not plan.converted
  assert reason in plan.skipped[0].reason


def test_nested_models_are_inlined_and_converted():
  base = helpers.applications_style_densenet(classifier_activation=None)
  helpers.randomize_batch_norm(base)
  inputs = keras.Input((32, 32, 3))
  outer = keras.Model(inputs, keras.layers.Dense(3, name="head")(base(inputs)))
  plan = tfsdn.conversion_plan(outer)
  assert len(plan.converted) == 11
  converted = tfsdn.make_prunable(outer)
  assert len(tfsdn.prunable_layers(converted)) == 11
  assert not any(isinstance(l, keras.Model) for l in converted.layers)
  x = _images((32, 32, 3), count=2)
  assert _max_diff(outer, converted, x) <= 1e-5
  clash = keras.Sequential([keras.Input((32, 32, 3)), base,
                            keras.layers.Dense(3, name="predictions")])
  with pytest.raises(ValueError, match="named 'predictions'"):
    tfsdn.make_prunable(clash)


def test_a_base_called_with_training_false_keeps_its_batch_norms_frozen():
  base = helpers.applications_style_densenet(blocks=(2,),
                                             classifier_activation=None)
  helpers.randomize_batch_norm(base)
  inputs = keras.Input((32, 32, 3))
  outer = keras.Model(inputs, keras.layers.Dense(10, name="head")(
      base(inputs, training=False)))
  converted = tfsdn.make_prunable(outer)
  x, y = helpers.random_data(8)
  models = {"original": outer, "converted": converted}
  moving = {}
  for name, model in models.items():
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.numpy().copy() for w in model.weights
              if "moving_mean" in w.name]
    model.train_on_batch(x, y)
    after = [w.numpy() for w in model.weights if "moving_mean" in w.name]
    moving[name] = sum(not np.array_equal(a, b)
                       for a, b in zip(before, after))
    assert len(before) > 0
  assert moving == {"original": 0, "converted": 0}
  layer = tfsdn.prunable_layers(converted)[0]
  assert not layer.batch_norm.trainable
  # The layer still measures its scores in training.
  pruned = tfsdn.prune_dense_connections(converted,
                                         tfsdn.StagedSparsity([(2, 0.5)]))
  helpers.compile_sgd(pruned)
  helpers.fit_steps(pruned, 3, callbacks=[tfsdn.UpdateScores()])
