"""benchmarks/training_overhead.py times what a user's fit runs, both models."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))
import training_overhead  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_both_models_are_timed_on_the_same_steps():
  row = training_overhead.time_training("densenet10", image_size=32,
                                        batch_size=2, steps=2, rounds=2)
  assert row["steps_timed"] == {"stock": 2, "wrapped_measuring": 2,
                                "wrapped_between_stages": 2}
  assert row["prunable_layers"] == 8  # 6 dense layers, 2 transitions
  assert row["statistics_window_steps"] == 153  # momentum 0.9
  seconds = row["median_step_seconds"]
  assert row["over_stock"] == pytest.approx({
      name: seconds[name] / seconds["stock"]
      for name in ("wrapped_measuring", "wrapped_between_stages")})


def test_the_stock_twin_is_stock_and_computes_the_same():
  stock, wrapped, shape = training_overhead.models("densenet10", 32,
                                                   measuring_stage=5)
  assert shape == (32, 32, 3)
  assert not any(type(l).__name__ == "PrunableConcatConv" for l in stock.layers)
  assert all(l.pruning_schedule.stages == [(5, 0.5)]
             for l in wrapped.layers if hasattr(l, "pruning_schedule"))
  with pytest.raises(ValueError, match="unknown net 'resnet50'"):
    training_overhead.check_net("resnet50")
  with pytest.raises(ValueError, match="unknown net 'densenetX'"):
    training_overhead.check_net("densenetX")
