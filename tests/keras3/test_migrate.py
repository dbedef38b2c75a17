"""Moving trained tfsdn models between tf_keras (tfmot) and Keras 3."""

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
