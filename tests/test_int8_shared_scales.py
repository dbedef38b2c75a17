"""benchmarks/int8_shared_scales.py: int8 LiteRT without requantizations."""

import importlib
import os
import sys

from hypothesis import given
from hypothesis import strategies as st
import numpy as np
import pytest

import tfsdn
from tfsdn import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
shared = importlib.import_module("int8_shared_scales")
runtime_timing = importlib.import_module("runtime_timing")


def _int8_compact(tmp_path, **strip_kwargs):
  model = tfsdn.densenet.DenseNet(10, 4)
  testing.prune_at_random(model, 0.5, seed=3)
  # The exact reads with one concatenation per layer, as measured there.
  compact = tfsdn.strip(model, **{"slice_cost_macs": 0, "pool_first": False,
                                  "reuse_concats": False,
                                  **strip_kwargs}).model
  calibration = [np.random.default_rng(0).uniform(
      0, 255, (16, 32, 32, 3)).astype("float32")]
  path = tfsdn.export_tflite(compact, tmp_path / "int8.tflite",
                             quantization="int8",
                             representative_images=calibration)
  with open(path, "rb") as f:
    return compact, f.read()


@pytest.mark.parametrize("strip_kwargs", [{}, {"max_concat_inputs": 2}])
def test_no_requantization_is_left_and_the_model_still_computes_it(
    tmp_path, strip_kwargs):
  pytest.importorskip("ai_edge_litert")
  compact, flatbuffer = _int8_compact(tmp_path, **strip_kwargs)
  assert shared.requantizations(flatbuffer) > 0
  rewritten, stats = shared.share_scales(flatbuffer)
  assert shared.requantizations(rewritten) == 0
  assert shared.unshared_concatenations(rewritten) == 0
  assert stats["requantizations_removed"] == shared.requantizations(
      flatbuffer)
  # One group per dense block: the transitions' convolutions rescale.
  assert stats["groups"] == 3
  images = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype(
      "float32")
  reference = compact(images, training=False).numpy()
  outputs = {}
  for name, data in (("int8", flatbuffer), ("shared", rewritten)):
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(data)
    # XNNPACK takes the model (it refuses a slice or concatenation whose
    # operands' scales disagree) and computes the function in int8.
    serve, _ = runtime_timing.litert_serve(str(path), 1)
    outputs[name] = serve(images)
  spread = np.ptp(reference)
  for name, output in outputs.items():
    assert np.abs(output - reference).max() < 0.1 * spread, name


def test_a_tensor_of_fixed_scale_in_a_group_is_refused(tmp_path):
  # A sigmoid's int8 output scale is fixed (1/256); concatenated with a
  # tensor of another range, no one scale can serve both.
  from tfsdn.compat import keras  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((8, 8, 3))
  a = keras.layers.Conv2D(4, 3, padding="same")(inputs)
  b = keras.layers.Conv2D(4, 3, padding="same")(inputs)
  b = keras.layers.Rescaling(7.0)(b)
  joined = keras.layers.Concatenate()(
      [keras.layers.Activation("sigmoid")(a), b])
  model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(joined))
  calibration = [np.random.default_rng(0).uniform(
      0, 1, (8, 8, 8, 3)).astype("float32")]
  path = tfsdn.export_tflite(model, tmp_path / "sigmoid.tflite",
                             quantization="int8",
                             representative_images=calibration)
  with open(path, "rb") as f, pytest.raises(ValueError,
                                            match="output of LOGISTIC"):
    shared.share_scales(f.read())


def test_a_float_model_is_refused(tmp_path):
  compact = tfsdn.strip(tfsdn.densenet.DenseNet(10, 4)).model
  path = tfsdn.export_tflite(compact, tmp_path / "float.tflite")
  with open(path, "rb") as f, pytest.raises(ValueError,
                                            match="FLOAT32"):
    shared.share_scales(f.read())


@given(st.lists(st.tuples(st.floats(1e-6, 10.0), st.integers(-128, 127)),
                min_size=1, max_size=6))
def test_the_union_range_covers_every_member_and_zero(params):
  scale, zero = shared._union_range(params)  # pylint: disable=protected-access
  assert -128 <= zero <= 127
  low, high = (-128 - zero) * scale, (127 - zero) * scale
  for member_scale, member_zero in params:
    tolerance = 1e-4 * max(abs(low), abs(high)) + scale
    assert low <= (-128 - member_zero) * member_scale + tolerance
    assert high >= (127 - member_zero) * member_scale - tolerance
