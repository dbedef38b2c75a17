"""make_prunable on tf_keras.applications DenseNets and hand-built models."""

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

import tfsdn
from tests import helpers
from tfsdn.compat import keras

# (builder, PrunableConcatConv count): dense layers whose BN reads a
# Concatenate (all but the first of each block) plus 3 transitions.
APPLICATIONS = {
    "DenseNet121": (tf_keras.applications.DenseNet121, 54 + 3),
    "DenseNet169": (tf_keras.applications.DenseNet169, 78 + 3),
    "DenseNet201": (tf_keras.applications.DenseNet201, 94 + 3),
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
      2 * l.input_channels for l in tfsdn.prunable_layers(converted))
  # Logits (no softmax), so a difference cannot hide in a saturated output.
  assert _max_diff(original, converted, _images(shape)) <= 1e-5
  plan = tfsdn.conversion_plan(original)
  assert len(plan.converted) == count
  assert [s.batch_norm for s in plan.skipped] == ["bn"]  # Feeds avg_pool.
  if shape[0] == 64:  # Prune half of every layer's inputs, strip, compare.
    tfsdn.prune_at_random(converted, 0.5, seed=1)
    compact = tfsdn.strip_to_compact(converted)
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
  assert set(prunable) == {"l2_conv", "transition"}
  assert prunable["l2_conv"].criterion == "weight_l1"
  # Everything not converted is still there under its own name.
  assert {"stem", "l1_bn", "l1_conv", "cat1", "cat2", "side_bn", "side_relu",
          "side_conv", "pool", "gap", "logits"} <= names
  assert not {"l2_bn", "l2_relu", "t_bn", "t_relu"} & names
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
  with pytest.raises(ValueError, match="no Concatenate -> BatchNormalization"
                     r"(.|\n)*feeds 2 layers"):
    tfsdn.make_prunable(model)


def test_nothing_to_convert_subclassed_and_keras3_models_are_refused():
  inputs = keras.Input((4,))
  with pytest.raises(ValueError, match="'plain' has no Concatenate"):
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


def _mini_applications_densenet(blocks=(2, 3), growth_rate=4):
  """tf_keras.applications' DenseNet topology and names, at toy size.

  The same conv_block (BN-ReLU-1x1 conv-BN-ReLU-3x3 conv, concatenated onto
  its input), transition_block and softmax head as
  `tf_keras.applications.densenet`, small enough to train in a unit test.
  """
  inputs = keras.Input((32, 32, 3), name="input_1")
  x = keras.layers.Conv2D(8, 3, use_bias=False, padding="same",
                          name="conv1/conv")(inputs)
  x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="conv1/bn")(x)
  x = keras.layers.Activation("relu", name="conv1/relu")(x)
  for b, layers in enumerate(blocks):
    for i in range(layers):
      name = f"conv{b + 2}_block{i + 1}"
      y = keras.layers.BatchNormalization(epsilon=1.001e-5,
                                          name=f"{name}_0_bn")(x)
      y = keras.layers.Activation("relu", name=f"{name}_0_relu")(y)
      y = keras.layers.Conv2D(4 * growth_rate, 1, use_bias=False,
                              name=f"{name}_1_conv")(y)
      y = keras.layers.BatchNormalization(epsilon=1.001e-5,
                                          name=f"{name}_1_bn")(y)
      y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)
      y = keras.layers.Conv2D(growth_rate, 3, padding="same", use_bias=False,
                              name=f"{name}_2_conv")(y)
      x = keras.layers.Concatenate(name=f"{name}_concat")([x, y])
    if b < len(blocks) - 1:
      name = f"pool{b + 2}"
      x = keras.layers.BatchNormalization(epsilon=1.001e-5,
                                          name=f"{name}_bn")(x)
      x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
      x = keras.layers.Conv2D(int(x.shape[-1]) // 2, 1, use_bias=False,
                              name=f"{name}_conv")(x)
      x = keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)
  x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="bn")(x)
  x = keras.layers.Activation("relu", name="relu")(x)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
  return keras.Model(inputs, outputs, name="mini_densenet")


def test_converted_model_goes_through_the_whole_flow(tmp_path):
  original = _mini_applications_densenet()
  model = tfsdn.make_prunable(original)
  # The first layer of each block reads no Concatenate; the transition does.
  assert [l.name for l in tfsdn.prunable_layers(model)] == [
      "conv2_block2_1_conv", "pool2_conv", "conv3_block2_1_conv",
      "conv3_block3_1_conv"]
  pruned = tfsdn.prune_dense_connections(
      model, tfsdn.StagedSparsity([(2, 0.25), (4, 0.5)]))
  pruned.compile(optimizer=keras.optimizers.SGD(0.01),
                 loss=keras.losses.SparseCategoricalCrossentropy())
  x, y = helpers.random_data(48)
  pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
             callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
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
