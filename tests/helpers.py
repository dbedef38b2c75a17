"""Small models and training loops shared by the tests."""

import numpy as np
import tensorflow_model_optimization as tfmot

import tfsdn
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
  x, y = random_data(steps * batch_size, seed)
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
  tfsdn.prune_at_random(model, sparsity, seed)
