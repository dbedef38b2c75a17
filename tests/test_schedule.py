import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import tfsdn
from tfsdn import schedule as schedule_lib
from tfsdn.compat import keras


def _at(schedule, step):
  should, sparsity = schedule(tf.constant(step, tf.int64))
  return bool(should), float(sparsity)


def test_prunes_exactly_at_listed_steps():
  schedule = tfsdn.StagedSparsity([(2, 0.25), (4, 0.5)])
  assert isinstance(schedule, tfmot.sparsity.keras.PruningSchedule)
  got = [_at(schedule, step) for step in range(7)]
  assert [g[0] for g in got] == [False, False, True, False, True, False, False]
  assert [g[1] for g in got] == pytest.approx(
      [0, 0, 0.25, 0.25, 0.5, 0.5, 0.5])


def test_works_inside_tf_function():
  schedule = tfsdn.StagedSparsity([(3, 0.3)])
  fn = tf.function(schedule)
  should, sparsity = fn(tf.constant(3, tf.int64))
  assert bool(should) and float(sparsity) == pytest.approx(0.3)
  assert not bool(fn(tf.constant(4, tf.int64))[0])


@pytest.mark.parametrize("stages, message", [
    ([], "non-empty"),
    ([(2, 0.5), (2, 0.6)], "strictly increasing"),
    ([(2, 0.5), (3, 0.4)], "non-decreasing"),
    ([(2, 1.0)], "sparsity=1.0"),
    ([(2, -0.1)], "sparsity=-0.1"),
    ([(-1, 0.5)], "step=-1"),
    ([(1.5, 0.5)], "step=1.5"),
    ([(1, 0.5, 3)], r"\(1, 0.5, 3\)"),
    ([2, 0.5], "Received: 2"),
    ([(2**63, 0.5)], "step=9223372036854775808"),
    ([(2, "0.5")], "sparsity='0.5'"),
])
def test_invalid_stages_name_the_value(stages, message):
  with pytest.raises(ValueError, match=message):
    tfsdn.StagedSparsity(stages)


def test_evenly_spreads_stages_and_sparsities():
  schedule = tfsdn.StagedSparsity.evenly(0.6, 3, begin_step=10, end_step=30)
  assert schedule.stages == [(10, pytest.approx(0.2)), (20, pytest.approx(0.4)),
                             (30, pytest.approx(0.6))]


def test_evenly_in_epochs_lands_on_first_batch_of_each_epoch():
  schedule = tfsdn.StagedSparsity.evenly(
      0.5, 2, begin_step=1, end_step=3, steps_per_epoch=10)
  assert [s for s, _ in schedule.stages] == [11, 31]
  assert tfsdn.StagedSparsity.from_epochs(
      [(1, 0.2), (2, 0.4)], steps_per_epoch=5).stages == [(6, 0.2), (11, 0.4)]


def test_epoch_zero_waits_for_measured_scores_everywhere():
  # Epoch 0 starts before any score is measured: all three helpers agree.
  assert schedule_lib.epoch_step(0, 10) == 5
  assert schedule_lib.epoch_step(0, 1) == schedule_lib.FIRST_STAGE_STEP
  assert schedule_lib.epoch_step(3, 10) == 31
  assert tfsdn.StagedSparsity.from_epochs(
      [(0, 0.2)], steps_per_epoch=10).stages == [(5, 0.2)]
  assert tfsdn.StagedSparsity.evenly(
      0.2, 1, begin_step=0, end_step=0, steps_per_epoch=10).stages == [(5, 0.2)]
  assert tfsdn.StagedSparsity.evenly(
      0.4, 2, begin_step=0, end_step=1, steps_per_epoch=3).stages == [
          (2, pytest.approx(0.2)), (4, pytest.approx(0.4))]


@pytest.mark.parametrize("step", [0, 1])
def test_steps_tfmot_never_reaches_or_before_scores_are_refused(step):
  with pytest.raises(ValueError, match=f"step={step}.*"):
    tfsdn.StagedSparsity([(step, 0.5)])
  with pytest.raises(ValueError, match=f"begin_step={step}"):
    tfsdn.StagedSparsity.evenly(0.5, 2, begin_step=step, end_step=10)


@pytest.mark.parametrize("channels, sparsity, expected", [
    (8, 0.25, 2), (8, 0.5, 4), (10, 0.3, 3), (12, 0.5, 6), (3, 0.99, 2),
    (5, 0.5, 3),  # 2.5 kept rounds half to even: 2 kept, 3 pruned.
    (1, 0.5, 0)])
def test_pruned_count_follows_tfmots_rounding(channels, sparsity, expected):
  assert schedule_lib.pruned_count(channels, sparsity) == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(final_sparsity=1.0, num_stages=2, begin_step=2, end_step=4),
     "final_sparsity=1.0"),
    (dict(final_sparsity=0.5, num_stages=0, begin_step=2, end_step=4),
     "num_stages=0"),
    (dict(final_sparsity=0.5, num_stages=2, begin_step=5, end_step=4),
     "begin_step=5"),
    (dict(final_sparsity=0.5, num_stages=5, begin_step=2, end_step=3),
     "share steps"),
    (dict(final_sparsity=0.5, num_stages=2, begin_step=0, end_step=1,
          steps_per_epoch=1), "share steps"),
    (dict(final_sparsity="0.5", num_stages=2, begin_step=2, end_step=4),
     "final_sparsity='0.5'"),
    (dict(final_sparsity=0.5, num_stages=True, begin_step=2, end_step=4),
     "num_stages=True"),
    (dict(final_sparsity=0.5, num_stages=2, begin_step="2", end_step=4),
     "begin_step='2'"),
])
def test_evenly_rejects_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tfsdn.StagedSparsity.evenly(**kwargs)


def test_config_round_trip_and_keras_deserialization():
  schedule = tfsdn.StagedSparsity([(5, 0.1), (9, 0.7)])
  config = schedule.get_config()
  assert tfsdn.StagedSparsity.from_config(config) == schedule
  assert tfsdn.StagedSparsity.from_config(config).get_config() == config
  restored = keras.utils.deserialize_keras_object(config)
  assert restored == schedule
