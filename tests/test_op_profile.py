"""benchmarks/op_profile.py: per-op-type times of a stripped model."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# Both benchmarks in one process, as pytest's workers load them: importing
# op_profile must define no flag that deploy_speed defines too.
import deploy_speed  # pylint: disable=g-import-not-at-top,wrong-import-position,unused-import
import op_profile  # pylint: disable=g-import-not-at-top,wrong-import-position
import tfsdn  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfsdn import testing  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_every_convolution_and_slice_is_counted_once_per_run():
  model = tfsdn.densenet.DenseNet(10, 4)
  testing.prune_at_random(model, 0.5, seed=0)
  compact = tfsdn.strip(model, slice_cost_macs=0).model
  convolutions = sum(type(layer).__name__ == "Conv2D"
                     for layer in compact.layers)
  wall_ms, ops = op_profile.profile(compact, batch_size=2, runs=3,
                                    traced_runs=2)
  assert wall_ms > 0
  conv_count = sum(count for op, (_, count) in ops.items() if "Conv2D" in op)
  assert conv_count == convolutions
  assert all(ms >= 0 and count >= 1 for ms, count in ops.values())
  # Ordered by time, the most first.
  times = [ms for ms, _ in ops.values()]
  assert times == sorted(times, reverse=True)
