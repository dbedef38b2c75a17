"""make_prunable on Keras 3: keras.applications DenseNets and hand-built models."""

import keras
import numpy as np
import pytest

import tfsdn.keras3 as sdn


def _mini_densenet(blocks=(2, 3), growth_rate=4, stem=8):
  """keras.applications' DenseNet topology and names, at toy size."""
  inputs = keras.Input((32, 32, 3), name="input_1")
  x = keras.layers.Conv2D(stem, 3, use_bias=False, padding="same",
                          name="conv1_conv")(inputs)
  x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
  x = keras.layers.Activation("relu", name="conv1_relu")(x)
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
      y = keras.layers.ReLU(name=f"{name}_1_relu")(y)
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
  outputs = keras.layers.Dense(10, name="predictions")(x)
  model = keras.Model(inputs, outputs, name="mini_densenet")
  rng = np.random.default_rng(5)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, variance = layer.get_weights()
      layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape),
                         rng.normal(0, 0.2, beta.shape),
                         rng.normal(0, 0.2, mean.shape),
                         rng.uniform(0.5, 1.5, variance.shape)])
  return model


def _max_diff(a, b, x):
  return float(np.max(np.abs(np.asarray(a(x, training=False)) -
                             np.asarray(b(x, training=False)))))


def test_applications_densenet121_converts_with_its_function(pixels):
  base = keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3),
                                        classes=10, classifier_activation=None)
  plan = sdn.conversion_plan(base)
  assert len(plan.converted) == 2 * 58 + 3
  assert {s.batch_norm for s in plan.skipped} == {"conv1_bn", "bn"}
  model = sdn.make_prunable(base)
  assert len(sdn.prunable_layers(model)) == 2 * 58 + 3
  assert _max_diff(base, model, pixels[:2]) <= 1e-5


# The JAX run of this folder (tests/test_keras3_backends.py) strips converted
# models in test_a_converted_model_prunes_in_fit_and_strips; the eager strip
# of all of DenseNet-121 takes about 50 s there, 6 s on TensorFlow.
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="time: strip of a converted model is tested on "
                    "every backend on a small model")
def test_a_converted_applications_densenet121_strips(pixels):
  base = keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3),
                                        classes=10, classifier_activation=None)
  model = sdn.make_prunable(base)
  # Half of every layer's inputs pruned: strip keeps the function.
  rng = np.random.default_rng(0)
  for layer in sdn.prunable_layers(model):
    scores = rng.uniform(0.1, 1, layer.input_channels).astype("float32")
    scores[rng.permutation(layer.input_channels)[:layer.input_channels // 2]] = 0
    layer.contribution_score.assign(scores)
  stripped = sdn.strip(model)
  assert _max_diff(model, stripped.model, pixels[:2]) <= 1e-4
  assert sdn.model_report(stripped.model).total_macs < 0.75 * (
      sdn.model_report(base).total_macs)


def test_it_agrees_with_the_tf_keras_path(pixels):
  tfsdn = pytest.importorskip("tfsdn")
  tf_keras = pytest.importorskip("tf_keras")
  del tf_keras
  model = _mini_densenet()
  ours = sdn.conversion_plan(model)
  theirs = tfsdn.conversion_plan(sdn.to_tf_keras(model))
  assert ours == theirs
  converted = sdn.make_prunable(model)
  moved = sdn.from_tf_keras(tfsdn.make_prunable(sdn.to_tf_keras(model)))
  assert [l.name for l in converted.layers] == [l.name for l in moved.layers]
  np.testing.assert_allclose(np.asarray(converted(pixels)),
                             np.asarray(moved(pixels)), atol=1e-5)


def test_a_converted_model_prunes_in_fit_and_strips(pixels):
  base = _mini_densenet()
  model = sdn.make_prunable(base)
  assert _max_diff(base, model, pixels) <= 1e-5
  model.compile(keras.optimizers.SGD(0.01),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  labels = np.random.default_rng(0).integers(0, 10, len(pixels))
  model.fit(pixels, labels, batch_size=4, epochs=2, verbose=0,
            callbacks=[sdn.Pruning([(2, 0.5)])])
  for layer in sdn.prunable_layers(model):
    assert layer.sparsity() == pytest.approx(0.5, abs=0.5 / layer.input_channels + 1e-6)
  stripped = sdn.strip(model)
  assert _max_diff(model, stripped.model, pixels) <= 1e-4
  assert not any(isinstance(l, sdn.PrunableConcatConv)
                 for l in stripped.model.layers)


def test_what_it_leaves_alone_is_said_and_nothing_to_convert_is_refused():
  inputs = keras.Input((8, 8, 4))
  # synchronized=True exists on the TensorFlow backend only.
  tensorflow = keras.backend.backend() == "tensorflow"
  x = keras.layers.BatchNormalization(
      name="bn_a", **({"synchronized": True} if tensorflow else
                      {"gamma_regularizer": "l2"}))(inputs)
  x = keras.layers.ReLU(name="relu_a")(x)
  x = keras.layers.Conv2D(4, 3, use_bias=False, padding="same", name="a")(x)
  x = keras.layers.BatchNormalization(name="bn_b")(x)
  x = keras.layers.ReLU(name="relu_b")(x)
  x = keras.layers.Conv2D(4, 3, padding="same", name="b")(x)  # has a bias
  y = keras.layers.BatchNormalization(name="bn_c")(x)
  y = keras.layers.Activation("sigmoid", name="sigmoid_c")(y)
  model = keras.Model(inputs, [x, y])
  reasons = {s.batch_norm: s.reason for s in sdn.conversion_plan(model).skipped}
  assert ("synchronized" if tensorflow else "gamma_regularizer") in (
      reasons["bn_a"])
  assert "has a bias" in reasons["bn_b"]
  assert "'sigmoid_c', a Activation, not a ReLU" in reasons["bn_c"]
  with pytest.raises(ValueError, match="(?s)no BatchNormalization.*bn_a: it "):
    sdn.make_prunable(model)


def test_wrong_models_and_arguments_are_refused():
  with pytest.raises(ValueError, match="criterion"):
    sdn.make_prunable(_mini_densenet(), criterion="nope")
  converted = sdn.make_prunable(_mini_densenet())
  with pytest.raises(ValueError, match="already has PrunableConcatConv"):
    sdn.make_prunable(converted)
  tfsdn = pytest.importorskip("tfsdn")
  with pytest.raises(TypeError):
    sdn.make_prunable(tfsdn.densenet.DenseNet(depth=10, growth_rate=4))


def test_a_nested_base_called_with_training_false_stays_frozen(pixels):
  base = _mini_densenet(blocks=(2,))
  inputs = keras.Input((32, 32, 3))
  outer = keras.Model(inputs, keras.layers.Dense(3, name="head")(
      base(inputs, training=False)))
  converted = sdn.make_prunable(outer)
  assert len(sdn.prunable_layers(converted)) == 4
  assert not any(isinstance(l, keras.Model) for l in converted.layers)
  assert _max_diff(outer, converted, pixels) <= 1e-5
  assert all(not l.batch_norm.trainable for l in sdn.prunable_layers(converted))
  # Frozen BNs do not move in training, but the layers still measure scores.
  converted.compile(keras.optimizers.SGD(0.01),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  layer = sdn.prunable_layers(converted)[0]
  before = np.asarray(layer.batch_norm.moving_mean).copy()
  statistics = np.asarray(layer.input_abs_mean).copy()
  converted.fit(pixels, np.zeros(len(pixels)), batch_size=4, epochs=1,
                verbose=0, callbacks=[sdn.Pruning([(10, 0.5)])])
  np.testing.assert_array_equal(np.asarray(layer.batch_norm.moving_mean),
                                before)
  assert not np.array_equal(np.asarray(layer.input_abs_mean), statistics)
