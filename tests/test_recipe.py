import pytest

from tfsdn import recipe


def test_default_pruning_epochs_end_a_quarter_before_the_first_drop():
  assert recipe.default_pruning_epochs(8) == (1, 2)
  assert recipe.default_pruning_epochs(300) == (37, 75)
  assert recipe.default_pruning_epochs(8, begin_epoch=0, end_epoch=4) == (0, 4)
  assert recipe.default_pruning_epochs(8, begin_epoch=3, end_epoch=1) == (3, 3)


def test_staged_schedule_places_stages_on_epoch_boundaries():
  schedule = recipe.staged_schedule(0.5, 3, epochs=8, steps_per_epoch=79)
  stages = schedule.get_config()["config"]["stages"]
  assert [step for step, _ in stages] == [80, 120, 159]
  assert [sparsity for _, sparsity in stages] == pytest.approx(
      [1 / 6, 1 / 3, 0.5])
  # An epoch-0 stage waits for the scores to see half an epoch of data.
  assert recipe.staged_schedule(0.5, 2, epochs=8, steps_per_epoch=79,
                                begin_epoch=0).stages[0][0] == 39


def test_step_decay_divides_by_ten_at_half_and_three_quarters():
  schedule = recipe.step_decay(0.1, 8)
  assert [schedule(e) for e in range(8)] == pytest.approx(
      [0.1] * 4 + [0.01] * 2 + [0.001] * 2)


@pytest.mark.parametrize("epochs, rates", [
    (1, [0.1]),
    (2, [0.1, 0.01]),  # the drops coincide: one drop, not /100 at once
    (3, [0.1, 0.01, 0.001]),
    (4, [0.1, 0.1, 0.01, 0.001]),
])
def test_step_decay_of_short_runs_drops_by_ten_at_a_time(epochs, rates):
  schedule = recipe.step_decay(0.1, epochs)
  assert [schedule(e) for e in range(epochs)] == pytest.approx(rates)


def test_step_decay_refuses_no_epochs():
  with pytest.raises(ValueError, match="epochs=0"):
    recipe.step_decay(0.1, 0)
