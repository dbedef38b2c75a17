import collections
import os

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow.python.distribute import distribute_lib
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

import tfsdn
from tfsdn import schedule as schedule_lib
from tfsdn import testing
from tfsdn.compat import keras
from tests import helpers


def _schedule():
  return tfsdn.StagedSparsity([(2, 0.25), (4, 0.5)])


def _check_half_pruned(model):
  for layer in tfsdn.prunable_layers(model):
    zeros = int(np.sum(layer.contribution_score.numpy() == 0))
    assert zeros == schedule_lib.pruned_count(layer.input_channels, 0.5), (
        layer.name)


def _perturb_pruned_inputs_leaves_output(model, images):
  """Adds noise to every pruned input channel of every prunable layer."""
  base = model(images, training=False).numpy()
  for layer in tfsdn.prunable_layers(model):
    pruned = layer.pruned_channels()
    original_call = layer.call

    def noisy_call(inputs, training=None, _call=original_call, _idx=pruned):
      inputs = inputs if isinstance(inputs, list) else [inputs]
      x = tf.concat(inputs, -1)
      noise = np.zeros(x.shape[-1], "float32")
      noise[_idx] = 1e3
      return _call([x + noise], training=training)

    layer.call = noisy_call
  try:
    perturbed = model(images, training=False).numpy()
  finally:
    for layer in tfsdn.prunable_layers(model):
      del layer.call
  np.testing.assert_allclose(perturbed, base, atol=1e-5)


def test_returns_a_copy_with_every_prunable_layer_wrapped():
  model = helpers.tiny_densenet()
  pruned = tfsdn.prune_dense_connections(model, _schedule())
  wrappers = [l for l in pruned.layers
              if isinstance(l, pruning_wrapper.PruneLowMagnitude)]
  assert len(wrappers) == len(tfsdn.prunable_layers(model)) == 8
  assert all(isinstance(w.layer, tfsdn.PrunableConcatConv) for w in wrappers)
  stock = [l for l in pruned.layers if isinstance(l, keras.layers.Conv2D)]
  assert [l.name for l in stock] == ["stem_conv"]
  x, _ = helpers.random_data(4)
  np.testing.assert_allclose(pruned(x, training=False), model(x, training=False),
                             atol=1e-5)
  assert tfsdn.prunable_layers(pruned)[0] is not tfsdn.prunable_layers(model)[0]


def test_staged_pruning_with_tfmot_callbacks(tmp_path, images):
  model = helpers.tiny_densenet()
  pruned = helpers.compile_sgd(
      tfsdn.prune_dense_connections(model, _schedule()))
  helpers.fit_steps(pruned, 6, callbacks=[
      tfmot.sparsity.keras.PruningSummaries(str(tmp_path / "logs"))])
  _check_half_pruned(pruned)
  _perturb_pruned_inputs_leaves_output(pruned, images)
  assert os.listdir(tmp_path / "logs")
  # The original model was not touched.
  assert all(l.sparsity() == 0 for l in tfsdn.prunable_layers(model))

  stripped = tfmot.sparsity.keras.strip_pruning(pruned)
  path = str(tmp_path / "stripped.keras")
  stripped.save(path)
  loaded = keras.models.load_model(path)
  for a, b in zip(tfsdn.prunable_layers(stripped),
                  tfsdn.prunable_layers(loaded)):
    np.testing.assert_array_equal(a.contribution_score.numpy(),
                                  b.contribution_score.numpy())
  np.testing.assert_allclose(loaded(images), stripped(images), atol=1e-5)


def test_scores_never_come_back_during_further_training():
  pruned = helpers.compile_sgd(
      tfsdn.prune_dense_connections(helpers.tiny_densenet(), _schedule()))
  helpers.fit_steps(pruned, 4)
  before = {l.name: set(l.pruned_channels())
            for l in tfsdn.prunable_layers(pruned)}
  helpers.fit_steps(pruned, 6, seed=1)
  for layer in tfsdn.prunable_layers(pruned):
    assert before[layer.name] <= set(layer.pruned_channels())


def test_densenet40_check_from_the_issue(images):
  model = tfsdn.densenet.DenseNet(depth=40, growth_rate=12)
  pruned = helpers.compile_sgd(
      tfsdn.prune_dense_connections(model, _schedule()))
  helpers.fit_steps(pruned, 6, batch_size=4)
  _check_half_pruned(pruned)
  _perturb_pruned_inputs_leaves_output(pruned, images[:2])


@pytest.fixture(scope="module")
def mirrored():
  # One strategy per process: a second MirroredStrategy in the same process
  # can mix up collective instance keys with the first.
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def test_mirrored_strategy_prunes_alike_on_every_replica(mirrored):
  strategy = mirrored
  assert strategy.num_replicas_in_sync == 2
  with strategy.scope():
    pruned = helpers.compile_sgd(
        tfsdn.prune_dense_connections(helpers.tiny_densenet(), _schedule()))
  helpers.fit_steps(pruned, 6, batch_size=8)
  _check_half_pruned(pruned)
  for layer in tfsdn.prunable_layers(pruned):
    values = [v.numpy() for v in layer.contribution_score.values]
    assert len(values) == 2
    np.testing.assert_array_equal(values[0], values[1])  # bit for bit


def test_global_allocation_under_mirrored_strategy(mirrored):
  plan = tfsdn.GlobalAllocation([(2, 0.8), (4, 0.5)], floor=0.1)
  with mirrored.scope():
    pruned = helpers.compile_sgd(
        tfsdn.prune_dense_connections(helpers.tiny_densenet(), plan))
  check = tfsdn.UpdateScores()
  helpers.fit_steps(pruned, 6, batch_size=8, callbacks=[check])
  assert [h["step"] for h in check.history] == [2, 4]
  for stage in check.history:
    assert all(p == s for p, s, _ in stage["layers"].values()), stage
  for layer in tfsdn.prunable_layers(pruned):
    values = [v.numpy() for v in layer.contribution_score.values]
    np.testing.assert_array_equal(values[0], values[1])
  report = tfsdn.model_report(tfsdn.strip(pruned))
  assert report.total_macs <= 0.5 * tfsdn.allocation.dense_macs(pruned)


def test_replicas_seeing_mirror_image_batches_still_prune_exactly(mirrored):
  # Replica 1 sees channel 1 three times larger, replica 2 channel 0: the
  # average of their own scores ties, so all replicas must share one.
  with mirrored.scope():
    inputs = keras.Input((2, 2, 2))
    layer = tfsdn.PrunableConcatConv(
        1, kernel_size=1, kernel_initializer="ones", score_momentum=0.0,
        batch_norm_trainable=False, conv_trainable=False)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(layer(inputs)))
    pruned = tfsdn.prune_dense_connections(
        keras.Model(inputs, outputs), tfsdn.StagedSparsity([(2, 0.5)]))
    pruned.compile("sgd", "mse")
  first = np.ones((1, 2, 2, 2), "float32")
  first[..., 1] = 3
  second = np.ones((1, 2, 2, 2), "float32")
  second[..., 0] = 3
  check = tfsdn.UpdateScores()
  pruned.fit(np.concatenate([first, second] * 2), np.zeros((4, 1)),
             batch_size=2, shuffle=False, verbose=0,
             callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), check])
  assert check.history[0]["layers"][layer.name] == (1, 1, 2)
  # The statistics are the average over both replicas' batches.
  trained = tfsdn.prunable_layers(pruned)[0]
  np.testing.assert_allclose(trained.input_abs_mean.numpy(), [2.0, 2.0],
                             rtol=1e-4)


def _merge_calls_per_step(strategy, model, monkeypatch):
  """Cross-replica merges traced in one training step, by merge function."""
  calls = []
  original = distribute_lib.ReplicaContext.merge_call

  def counting(self, merge_fn, args=(), kwargs=None):
    calls.append(getattr(merge_fn, "__qualname__", repr(merge_fn)))
    return original(self, merge_fn, args, kwargs)

  monkeypatch.setattr(distribute_lib.ReplicaContext, "merge_call", counting)

  @tf.function
  def step(x, y):
    return strategy.run(model.train_step, args=((x, y),))

  step.get_concrete_function(tf.TensorSpec([4, 32, 32, 3]),
                             tf.TensorSpec([4], tf.int64))
  monkeypatch.undo()
  return collections.Counter(calls)


def test_scores_add_no_synchronisation_to_a_training_step(mirrored,
                                                         monkeypatch):
  # tfsdn's statistics are per replica (ON_READ) and its scores are computed
  # by UpdateScores outside the step: a training step of a tfsdn DenseNet
  # merges across replicas exactly as often as the same net of stock layers,
  # and pruning adds only tfmot's own merges (mask update, mask multiply).
  with mirrored.scope():
    model = helpers.compile_sgd(helpers.tiny_densenet())
    stock = helpers.compile_sgd(tfsdn.strip_to_compact(helpers.tiny_densenet()))
    pruned = helpers.compile_sgd(
        tfsdn.prune_dense_connections(helpers.tiny_densenet(), _schedule()))
  stock_merges = _merge_calls_per_step(mirrored, stock, monkeypatch)
  assert _merge_calls_per_step(mirrored, model, monkeypatch) == stock_merges
  extra = _merge_calls_per_step(mirrored, pruned, monkeypatch) - stock_merges
  assert extra and all("mask_update" in name or "weight_assign" in name
                       for name in extra), extra


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_scores_float32(policy, images):
  keras.mixed_precision.set_global_policy(policy)
  pruned = helpers.compile_sgd(
      tfsdn.prune_dense_connections(helpers.tiny_densenet(), _schedule()))
  helpers.fit_steps(pruned, 6)
  for layer in tfsdn.prunable_layers(pruned):
    assert layer.contribution_score.dtype == tf.float32
    assert layer.compute_dtype == policy.split("_")[1]
  _check_half_pruned(pruned)
  assert np.isfinite(pruned(images, training=False).numpy()).all()
  # The concatenations (a DenseNet's largest tensors) run in 16 bits.
  graph = tf.function(lambda x: pruned(x, training=True)).get_concrete_function(
      tf.TensorSpec([2, 32, 32, 3], tf.float32)).graph
  concats = [op for op in graph.get_operations()
             if op.type == "ConcatV2" and op.get_attr("T").is_floating]
  assert concats
  assert {op.get_attr("T") for op in concats} == {
      tf.as_dtype(policy.split("_")[1])}


@pytest.mark.parametrize("save_format", ["keras", "tf"])
def test_save_mid_schedule_and_resume(tmp_path, save_format):
  schedule = tfsdn.StagedSparsity([(2, 0.25), (8, 0.5)])
  pruned = helpers.compile_sgd(
      tfsdn.prune_dense_connections(helpers.tiny_densenet(), schedule))
  helpers.fit_steps(pruned, 4)
  path = str(tmp_path / ("model.keras" if save_format == "keras" else
                         "model_tf"))
  pruned.save(path, **({} if save_format == "keras" else
                       {"save_format": save_format}))
  with tfmot.sparsity.keras.prune_scope():
    loaded = keras.models.load_model(path)
  wrappers = [l for l in loaded.layers
              if isinstance(l, pruning_wrapper.PruneLowMagnitude)]
  assert wrappers and int(wrappers[0].pruning_step.numpy()) == 4
  assert wrappers[0].pruning_schedule == schedule
  first_stage = {}
  for a, b in zip(tfsdn.prunable_layers(pruned), tfsdn.prunable_layers(loaded)):
    np.testing.assert_array_equal(a.contribution_score.numpy(),
                                  b.contribution_score.numpy())
    first_stage[b.name] = set(b.pruned_channels())
    assert abs(len(first_stage[b.name]) - round(0.25 * b.input_channels)) <= 1
  helpers.fit_steps(loaded, 6, seed=2)
  assert int(wrappers[0].pruning_step.numpy()) == 10
  _check_half_pruned(loaded)
  for layer in tfsdn.prunable_layers(loaded):
    assert first_stage[layer.name] <= set(layer.pruned_channels())


def test_rejects_keras3_layers_and_models():
  with pytest.raises(TypeError, match="tf_keras"):
    tfsdn.prune_dense_connections(keras3.layers.Dense(2), _schedule())
  inputs = keras3.Input((4,))
  with pytest.raises(TypeError, match="TF_USE_LEGACY_KERAS"):
    tfsdn.prune_dense_connections(
        keras3.Model(inputs, keras3.layers.Dense(2)(inputs)), _schedule())


def test_rejects_models_without_prunable_layers_and_bad_schedules():
  inputs = keras.Input((4,))
  plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
  with pytest.raises(ValueError, match="no PrunableConcatConv"):
    tfsdn.prune_dense_connections(plain, _schedule())
  with pytest.raises(TypeError, match="schedule=0.5"):
    tfsdn.prune_dense_connections(helpers.tiny_densenet(), 0.5)


@pytest.mark.parametrize("kwargs", [dict(block_size=(1, 2)),
                                    dict(sparsity_m_by_n=(2, 4)),
                                    dict(block_pooling_type="MAX")])
def test_rejects_tfmot_options_meaningless_for_channel_scores(kwargs):
  name = next(iter(kwargs))
  with pytest.raises(TypeError, match=f"'{name}'"):
    tfsdn.prune_dense_connections(helpers.tiny_densenet(), _schedule(),
                                  **kwargs)


def test_rejects_subclassed_models():
  class Sub(keras.Model):

    def call(self, x):
      return x

  with pytest.raises(TypeError, match="functional and Sequential"):
    tfsdn.prune_dense_connections(Sub(), _schedule())


def test_prune_at_random_prunes_the_requested_fraction():
  model = helpers.tiny_densenet()
  testing.prune_at_random(model, 0.5, seed=3)
  _check_half_pruned(model)
  with pytest.raises(ValueError, match="sparsity=1.5"):
    testing.prune_at_random(model, 1.5)
  with pytest.raises(ValueError, match="sparsity='0.5'"):
    testing.prune_at_random(model, "0.5")


def test_hdf5_save_of_a_wrapped_model_points_to_keras(tmp_path):
  pruned = tfsdn.prune_dense_connections(
      helpers.tiny_densenet(), tfsdn.StagedSparsity([(2, 0.5)]))
  for path, kwargs in ((tmp_path / "pruned.h5", {}),
                       (tmp_path / "pruned", {"save_format": "h5"})):
    with pytest.raises(ValueError, match=r"HDF5.*pruned\.keras"):
      pruned.save(path, **kwargs)
    assert not path.exists()
  pruned.save(tmp_path / "pruned.keras")  # The format it points to works.
  with tfmot.sparsity.keras.prune_scope():
    assert tfsdn.compat.keras.models.load_model(tmp_path / "pruned.keras")
  tfsdn.strip(pruned).model.save(tmp_path / "compact.h5")  # Stock layers.
