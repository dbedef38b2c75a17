import numpy as np
import pytest

import tfsdn
from tfsdn.compat import keras


def _trainable(model):
  return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_densenet40_has_the_published_parameter_count():
  model = tfsdn.densenet.DenseNet(depth=40, growth_rate=12)
  assert _trainable(model) == 1_019_722  # 1.02M, Network Slimming Table 1.
  assert abs(_trainable(model) - 1.0e6) / 1.0e6 < 0.03
  assert len(tfsdn.prunable_layers(model)) == 36 + 2


def test_densenet_bc100_has_the_published_parameter_count():
  model = tfsdn.densenet.DenseNet(depth=100, growth_rate=12, bottleneck=True,
                                  compression=0.5, num_classes=100)
  assert _trainable(model) == 800_032  # 0.8M in the DenseNet paper.
  assert model.name == "densenet_bc100"
  # 48 bottlenecks (connections), 48 3x3 convs (bottleneck widths), 2
  # transitions.
  assert len(tfsdn.prunable_layers(model)) == 48 + 48 + 2


@pytest.mark.parametrize("builder, trainable", [
    (tfsdn.densenet.DenseNet121, 7_978_856),  # as tf_keras.applications
])
def test_imagenet_densenet_matches_keras_applications(builder, trainable):
  model = builder()
  assert _trainable(model) == trainable
  assert len(tfsdn.prunable_layers(model)) == 58 + 58 + 3


def test_block_configurations():
  assert tfsdn.densenet.IMAGENET_BLOCKS[169] == (6, 12, 32, 32)
  assert tfsdn.densenet.IMAGENET_BLOCKS[201] == (6, 12, 48, 32)


def test_stable_layer_names_and_raw_pixel_input():
  model = tfsdn.densenet.DenseNet(depth=10, growth_rate=4)
  names = [layer.name for layer in model.layers]
  for name in ["normalize", "stem_conv", "block1_layer1", "block1_layer2",
               "transition1", "transition1_pool", "block3_layer2", "logits"]:
    assert name in names
  normalize = model.get_layer("normalize")
  pixel = np.full((1, 1, 1, 3), 255.0, "float32")
  expected = (255.0 - np.array(tfsdn.densenet.CIFAR_MEAN)) / np.array(
      tfsdn.densenet.CIFAR_STD)
  np.testing.assert_allclose(normalize(pixel).numpy().ravel(), expected,
                             rtol=1e-5)


def test_custom_mean_std_and_dropout():
  model = tfsdn.densenet.DenseNet(depth=10, growth_rate=4, dropout_rate=0.2,
                                  mean=(0, 0, 0), std=(1, 1, 1))
  assert any(isinstance(l, keras.layers.Dropout) for l in model.layers)
  np.testing.assert_allclose(
      model.get_layer("normalize")(np.ones((1, 1, 1, 3), "float32")), 1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=41), "depth=41"),
    (dict(depth=42, bottleneck=True), "depth=42"),
    (dict(growth_rate=0), "growth_rate=0"),
    (dict(compression=0.0), "compression=0.0"),
    (dict(num_classes=1), "num_classes=1"),
    (dict(dropout_rate=1.0), "dropout_rate=1.0"),
    (dict(std=(1, 0, 1)), "std="),
    (dict(mean=(1, 2)), "mean="),
])
def test_bad_arguments_name_the_value(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tfsdn.densenet.DenseNet(**kwargs)
