"""benchmarks/op_profile.py: per-op-type times of a stripped model."""

import os
import sys

import pytest

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


def test_onnx_runtime_profile_counts_each_convolution_once_per_run():
  pytest.importorskip("onnxruntime")
  pytest.importorskip("tf2onnx")
  model = tfsdn.densenet.DenseNet(10, 4)
  testing.prune_at_random(model, 0.5, seed=0)
  for options in ({}, {"slice_cost_macs": 0}):
    compact = tfsdn.strip(model, **options).model
    convolutions = sum(type(layer).__name__ == "Conv2D"
                       for layer in compact.layers)
    wall_ms, ops, macs = op_profile.profile_onnx(compact, batch_size=2,
                                                 runs=3, traced_runs=2)
    assert wall_ms > 0
    # ONNX Runtime names its kernels by ONNX op type; a default strip is
    # laid out again for ONNX Runtime (one Gather per layer), slices asked
    # for go as they are.
    assert ops["Conv"][1] == convolutions
    reads = "Gather" if not options else "Slice"
    assert reads in ops and ("Slice" if not options else "Gather") not in ops
    exported = op_profile.compact_for(compact, tfsdn.Target("onnx", 2))
    assert macs == tfsdn.model_report(exported).total_macs
    times = [ms for ms, _ in ops.values()]
    assert times == sorted(times, reverse=True)
