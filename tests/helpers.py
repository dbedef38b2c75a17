"""Small models and training loops shared by the tests."""

import os

import numpy as np
import tensorflow_model_optimization as tfmot

import tfsdn
from tfsdn import testing
from tfsdn.compat import keras


def tiny_densenet(**kwargs):
  """DenseNet-10 with growth 4: 2 dense layers per block, 8 prunable layers."""
  kwargs.setdefault("depth", 10)
  kwargs.setdefault("growth_rate", 4)
  return tfsdn.densenet.DenseNet(**kwargs)


def random_data(count=48, seed=0, classes=10):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 255, (count, 32, 32, 3)).astype("float32")
  y = rng.integers(0, classes, count)
  return x, y


def compile_sgd(model, learning_rate=0.05):
  model.compile(
      keras.optimizers.SGD(learning_rate, momentum=0.9),
      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  return model


def fit_steps(model, steps, batch_size=8, seed=0, epochs=1, callbacks=()):
  """Fits on random data with tfmot's and tfsdn's pruning callbacks."""
  x, y = random_data(steps * batch_size, seed)
  callbacks = list(callbacks)
  if not any(isinstance(c, tfsdn.UpdateScores) for c in callbacks):
    callbacks.append(tfsdn.UpdateScores())
  model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0,
            shuffle=False,
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), *callbacks])


def randomize_batch_norm(model, seed=0):
  """Gives every BatchNormalization non-trivial moving statistics."""
  rng = np.random.default_rng(seed)
  for weight in model.weights:
    if "moving_mean" in weight.name:
      weight.assign(rng.normal(0, 0.2, weight.shape))
    elif "moving_variance" in weight.name:
      weight.assign(rng.uniform(0.5, 2.0, weight.shape))
    elif "gamma" in weight.name:
      weight.assign(rng.uniform(0.5, 1.5, weight.shape))
    elif "beta" in weight.name:
      weight.assign(rng.normal(0, 0.2, weight.shape))


def prune_randomly(model, sparsity, seed=0):
  """Zeroes round(sparsity * C) random scores in every PrunableConcatConv."""
  testing.prune_at_random(model, sparsity, seed)


def applications_style_densenet(blocks=(2, 3), growth_rate=4, stem=8,
                                classifier_activation="softmax"):
  """tf_keras.applications' DenseNet topology and names, at toy size.

  The same conv_block (BN-ReLU-1x1 conv-BN-ReLU-3x3 conv, concatenated onto
  its input), transition_block and softmax head as
  `tf_keras.applications.densenet`, small enough to train in a unit test.
  """
  inputs = keras.Input((32, 32, 3), name="input_1")
  x = keras.layers.Conv2D(stem, 3, use_bias=False, padding="same",
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
  outputs = keras.layers.Dense(10, activation=classifier_activation,
                               name="predictions")(x)
  return keras.Model(inputs, outputs, name="mini_densenet")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_env(**overrides):
  """The environment to run an example script in.

  This checkout's tfsdn comes first on the path (not another installed
  copy), TensorFlow's C++ log is at level 2, and `overrides` sets variables
  (None removes one).
  """
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env["PYTHONPATH"] = os.pathsep.join(
      [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  for name, value in overrides.items():
    if value is None:
      env.pop(name, None)
    else:
      env[name] = value
  return env


# strip's exact reads (no widened reads, no pooling first): the compact
# model the MAC planner counts, and the layout the layout tests examine.
# `strip(model)` itself chooses a layout for `tfsdn.Target("tf", 1)`.
EXACT = dict(slice_cost_macs=0, pool_first=False)
