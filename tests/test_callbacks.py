"""UpdateScores: every stage is read back, and a shortfall stops training."""

import glob

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import tfsdn
from tfsdn import criteria
from tfsdn import schedule as schedule_lib
from tfsdn.compat import keras
from tests import helpers


def test_records_every_stage_with_exact_counts(tmp_path):
  pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(
      helpers.tiny_densenet(), tfsdn.StagedSparsity([(2, 0.3), (4, 0.5)])))
  check = tfsdn.UpdateScores(log_dir=str(tmp_path / "logs"))
  helpers.fit_steps(pruned, 5, callbacks=[check])
  assert [h["step"] for h in check.history] == [2, 4]
  for entry, sparsity in zip(check.history, [0.3, 0.5]):
    assert len(entry["layers"]) == 8
    for pruned_count, scheduled, channels in entry["layers"].values():
      assert scheduled == schedule_lib.pruned_count(channels, sparsity)
      assert pruned_count == scheduled
  assert glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))
  # After the last stage no layer measures statistics any more.
  layers = tfsdn.prunable_layers(pruned)
  assert all(float(l.measuring.numpy()) == 0.0 for l in layers)
  frozen = [l.input_abs_mean.numpy().copy() for l in layers]
  helpers.fit_steps(pruned, 2, seed=1, callbacks=[check])
  for layer, abs_mean in zip(layers, frozen):
    np.testing.assert_array_equal(layer.input_abs_mean.numpy(), abs_mean)


def test_layers_keep_measuring_while_a_stage_is_still_to_come():
  pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(
      helpers.tiny_densenet(), tfsdn.StagedSparsity([(2, 0.3), (40, 0.5)])))
  helpers.fit_steps(pruned, 4)
  assert all(float(l.measuring.numpy()) == 1.0
             for l in tfsdn.prunable_layers(pruned))


def test_steps_per_execution_still_checks_stages_inside_an_execution():
  pruned = tfsdn.prune_dense_connections(
      helpers.tiny_densenet(), tfsdn.StagedSparsity([(2, 0.5)]))
  pruned.compile(keras.optimizers.SGD(0.01),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 steps_per_execution=3)
  check = tfsdn.UpdateScores()
  helpers.fit_steps(pruned, 6, callbacks=[check])
  assert [h["step"] for h in check.history] == [2]


def _zero_channel_model():
  """One PrunableConcatConv whose inputs 3..7 are zero after its ReLU."""
  inputs = [keras.Input((4, 4, 3)), keras.Input((4, 4, 5))]
  layer = tfsdn.PrunableConcatConv(2, 1, batch_norm_trainable=False,
                                   name="pcc")
  model = keras.Model(inputs, layer(inputs))
  layer.batch_norm.beta.assign([0, 0, 0, -100, -100, -100, -100, -100])
  return model


def _fit_zero_channel_model(callbacks, sparsity=0.25):
  pruned = tfsdn.prune_dense_connections(
      _zero_channel_model(), tfsdn.StagedSparsity([(3, sparsity)]))
  pruned.compile(keras.optimizers.SGD(0.01), "mse")
  rng = np.random.default_rng(0)
  x = [rng.uniform(size=(16, 4, 4, c)).astype("float32") for c in (3, 5)]
  pruned.fit(x, np.zeros((16, 4, 4, 2), "float32"), batch_size=4, verbose=0,
             callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), *callbacks])
  return tfsdn.prunable_layers(pruned)[0]


def test_tied_zero_channels_are_pruned_exactly_lowest_index_first():
  check = tfsdn.UpdateScores()
  layer = _fit_zero_channel_model([check])
  # 8 * 0.75 = 6 kept: 2 of the 5 tied dead channels go, by index.
  assert layer.pruned_channels().tolist() == [3, 4]
  assert check.history[0]["layers"]["pcc"] == (2, 2, 8)


def test_a_shortfall_raises_and_names_the_layer(monkeypatch):
  # Without tie breaking (the old behaviour), tfmot keeps all tied channels.
  monkeypatch.setattr(
      criteria, "break_ties",
      lambda scores, live, order=None: scores * _as_float(live))
  with pytest.raises(tfsdn.StageShortfallError, match=r"pcc 0/2/8"):
    _fit_zero_channel_model([tfsdn.UpdateScores()])
  layer = _fit_zero_channel_model([tfsdn.UpdateScores(raise_on_shortfall=False)])
  assert len(layer.pruned_channels()) == 0


def _as_float(live):
  return tf.cast(live, tf.float32)


def test_refuses_a_model_without_wrapped_layers():
  model = helpers.compile_sgd(helpers.tiny_densenet())
  with pytest.raises(ValueError, match="prune_dense_connections"):
    helpers.fit_steps(model, 1, callbacks=[tfsdn.UpdateScores()])


def test_arguments_are_checked_where_they_enter():
  with pytest.raises(TypeError, match="raise_on_shortfall='no'"):
    tfsdn.UpdateScores(raise_on_shortfall="no")


def _fit_plain(model, steps, callbacks, batch_size=8):
  x, y = helpers.random_data(steps * batch_size)
  model.fit(x, y, batch_size=batch_size, verbose=0, shuffle=False,
            callbacks=callbacks)


@pytest.mark.parametrize("callbacks", [
    [tfmot.sparsity.keras.UpdatePruningStep()],  # The tfmot idiom alone.
    [tfsdn.UpdateScores()],                       # tfsdn's callback alone.
    None,
])
def test_the_tfmot_idiom_alone_prunes_as_scheduled(callbacks):
  pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(
      helpers.tiny_densenet(), tfsdn.StagedSparsity([(2, 0.5)])))
  _fit_plain(pruned, 4, callbacks)
  for layer in tfsdn.prunable_layers(pruned):
    assert len(layer.pruned_channels()) == schedule_lib.pruned_count(
        layer.input_channels, 0.5), layer.name


def _nested_model(training):
  full = helpers.tiny_densenet()
  backbone = keras.Model(full.input, full.get_layer("avg_pool").output,
                         name="backbone")
  inputs = keras.Input((32, 32, 3))
  features = (backbone(inputs) if training is None else
              backbone(inputs, training=training))
  return keras.Model(inputs, keras.layers.Dense(10)(features))


def test_a_backbone_called_with_training_false_is_refused():
  with pytest.raises(ValueError, match=r"'backbone'.*training=False"):
    tfsdn.prune_dense_connections(_nested_model(False),
                                  tfsdn.StagedSparsity([(2, 0.5)]))
  pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(
      _nested_model(None), tfsdn.StagedSparsity([(2, 0.5)])))
  _fit_plain(pruned, 3, [tfmot.sparsity.keras.UpdatePruningStep()])
  assert tfsdn.strip(pruned).pruned
  assert all(l.sparsity() == 0.5 for l in tfsdn.prunable_layers(pruned))


def test_a_step_that_does_not_advance_the_pruning_step_raises():
  pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(
      _nested_model(None), tfsdn.StagedSparsity([(2, 0.5)])))
  # What a backbone(x, training=False) wrapped by hand would do.
  for wrapper in tfsdn.callbacks.pruning_wrappers(pruned):
    wrapper.pruning_step.assign(0)
    wrapper.call = (lambda inputs, training=None, w=wrapper, c=wrapper.call:
                    c(inputs, training=False))
  with pytest.raises(tfsdn.StageShortfallError, match="did not advance"):
    _fit_plain(pruned, 3, [tfsdn.UpdateScores()])


def test_training_that_ends_unpruned_raises_at_the_end_of_fit(monkeypatch):
  monkeypatch.setattr(
      criteria, "break_ties",
      lambda scores, live, order=None: scores * _as_float(live))
  layer_check = tfsdn.UpdateScores(raise_on_shortfall=True)
  # Stage checks off (as a stage missed between two calls would be): the
  # end of fit still finds the layers short of their schedule.
  monkeypatch.setattr(layer_check, "_check", lambda *args: False)
  with pytest.raises(tfsdn.StageShortfallError, match="ended at pruning step"):
    _fit_zero_channel_model([layer_check])


class _MeasuringFlags(keras.callbacks.Callback):
  """Each batch's measuring flag of the first prunable layer."""

  def __init__(self):
    super().__init__()
    self.flags = []

  def on_train_batch_end(self, batch, logs=None):
    self.flags.append(float(tfsdn.prunable_layers(self.model)[0].measuring))


def _scores_after_a_stage(monkeypatch, tolerance):
  monkeypatch.setattr(tfsdn.common.stages, "STATISTICS_TOLERANCE", tolerance)
  monkeypatch.setattr(
      tfsdn.common.stages.statistics_window, "__defaults__", (tolerance,))
  keras.utils.set_random_seed(3)
  model = helpers.tiny_densenet(score_momentum=0.5)
  pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(
      model, tfsdn.StagedSparsity([(40, 0.5)])), learning_rate=0.01)
  flags = _MeasuringFlags()
  helpers.fit_steps(pruned, 40, batch_size=4, callbacks=[flags])
  assert all(float(l.measuring) == 0.0 for l in tfsdn.prunable_layers(pruned))
  return ([l.contribution_score.numpy() for l in
           tfsdn.prunable_layers(pruned)], flags.flags)


def test_statistics_are_measured_only_where_a_stage_weighs_them(monkeypatch):
  # score_momentum 0.5: the last 24 steps before the stage at step 40 weigh
  # all but 0.5 ** 24 = 6e-8 of its statistics.
  assert tfsdn.common.stages.statistics_window(0.5) == 24
  windowed, flags = _scores_after_a_stage(monkeypatch, 1e-7)
  always, every_flag = _scores_after_a_stage(monkeypatch, None)
  # Batch b runs step b + 1: steps 16..39 measure (and the stage's own, 40).
  assert flags == [0.0] * 15 + [1.0] * 25
  assert every_flag[:39] == [1.0] * 39
  for ours, reference in zip(windowed, always):
    assert (ours == 0).sum() > 0
    np.testing.assert_array_equal(ours == 0, reference == 0)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)
