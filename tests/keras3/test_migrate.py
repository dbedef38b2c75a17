"""Moving trained tfsdn models between tf_keras (tfmot) and Keras 3."""

import keras
import numpy as np
import pytest

import tfsdn.keras3 as sdn

tfsdn = pytest.importorskip("tfsdn")
tfmot = pytest.importorskip("tensorflow_model_optimization")


def _pruned_tf_keras_model():
  model = tfsdn.densenet.DenseNet(depth=10, growth_rate=4)
  pruned = tfsdn.prune_dense_connections(
      model, tfsdn.StagedSparsity([(2, 0.5)]))
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
  pruned.compile("sgd", "sparse_categorical_crossentropy")
  pruned.fit(images, rng.integers(0, 10, 8), batch_size=4, epochs=1,
             verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(),
                                   tfsdn.UpdateScores()])
  return pruned


def test_a_pruned_tf_keras_model_moves_to_keras3_and_back(pixels):
  pruned = _pruned_tf_keras_model()
  expected = pruned(pixels, training=False).numpy()
  moved = sdn.from_tf_keras(pruned)
  np.testing.assert_allclose(np.asarray(moved(pixels)), expected, atol=1e-5,
                             rtol=1e-5)
  layer = moved.get_layer("transition1")
  assert layer.sparsity() == pytest.approx(0.5, abs=0.05)
  # Keras 3 strips it; back on tf_keras it is the same model again.
  compact = sdn.strip(moved).model
  np.testing.assert_allclose(np.asarray(compact(pixels)), expected, atol=1e-4,
                             rtol=1e-4)
  back = sdn.to_tf_keras(moved)
  np.testing.assert_allclose(back(pixels).numpy(), expected, atol=1e-5,
                             rtol=1e-5)
  assert isinstance(back.get_layer("transition1"), tfsdn.PrunableConcatConv)


def test_wrong_direction_gets_a_type_error(pixels):
  del pixels
  with pytest.raises(TypeError, match="Keras 3 object.*tfsdn.keras3"):
    sdn.from_tf_keras(sdn.densenet.DenseNet(depth=10, growth_rate=4))
  with pytest.raises(TypeError, match="tfmot path"):
    sdn.to_tf_keras(tfsdn.densenet.DenseNet(depth=10, growth_rate=4))


@pytest.mark.parametrize("kwargs", [
    dict(depth=10, growth_rate=4),
    dict(depth=16, growth_rate=4, bottleneck=True, compression=0.5),
])
def test_the_keras3_report_and_heatmap_match_the_tfmot_path(kwargs, tmp_path):
  model = tfsdn.densenet.DenseNet(**kwargs)
  rng = np.random.default_rng(3)
  for layer in tfsdn.prunable_layers(model):
    scores = rng.uniform(0.1, 1, layer.input_channels).astype("float32")
    scores[rng.random(layer.input_channels) < 0.5] = 0
    scores[0] = 1.0  # keep one
    layer.contribution_score.assign(scores)
  theirs = tfsdn.model_report(model)
  ours = sdn.model_report(sdn.from_tf_keras(model))
  assert ours.total_params == theirs.total_params
  assert ours.total_macs == theirs.total_macs
  assert ours.rows == theirs.rows
  assert len(ours.blocks) == len(theirs.blocks)
  for mine, other in zip(ours.blocks, theirs.blocks):
    assert mine.consumers == other.consumers
    np.testing.assert_allclose(mine.matrix, other.matrix, equal_nan=True)
  sdn.plot_connectivity(ours, tmp_path / "c.png")
  assert (tmp_path / "c.png").stat().st_size > 1000


def test_an_applications_style_model_moves_with_slashes_in_names(pixels):
  # tf_keras.applications names layers "conv1/conv"; Keras 3 refuses '/'
  # (its own applications say "conv1_conv").
  if keras.backend.backend() != "tensorflow":
    pytest.skip("the tf_keras model runs on TensorFlow")
  from tests import helpers  # pylint: disable=g-import-not-at-top
  model = tfsdn.make_prunable(helpers.applications_style_densenet())
  ours = sdn.from_tf_keras(model)
  assert "conv1_conv" in [layer.name for layer in ours.layers]
  assert len(sdn.prunable_layers(ours)) == len(tfsdn.prunable_layers(model))
  np.testing.assert_allclose(np.asarray(ours(pixels)),
                             model(pixels).numpy(), atol=1e-5)
