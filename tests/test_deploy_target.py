"""Where the compact model runs: the layout planner, strip(target=...) and
the opt-in calibration."""

import collections
import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tfsdn
from tfsdn import calibration
from tfsdn.common import deploy_target
from tfsdn.compat import keras
from tfsdn.common.deploy_target import RuntimeCosts
from tfsdn.common.deploy_target import Target
from tfsdn import testing


def test_slice_cost_is_what_an_op_costs_in_macs_per_image():
  costs = RuntimeCosts(op_seconds=10e-6, macs_per_second=50e9,
                       op_seconds_per_image=1e-6)
  assert deploy_target.slice_cost_macs(Target("tf", 1, costs)) == (
      pytest.approx(11e-6 * 50e9))
  assert deploy_target.slice_cost_macs(Target("tf", 10, costs)) == (
      pytest.approx(20e-6 * 50e9 / 10))
  # Per-op costs weigh less per image as the batch grows.
  built_in = [deploy_target.slice_cost_macs(Target("tf", b))
              for b in (1, 8, 64)]
  assert built_in == sorted(built_in, reverse=True) and built_in[-1] > 0


def test_each_runtime_gets_its_switches():
  litert = deploy_target.strip_options(Target("litert", 1))
  assert litert["max_concat_inputs"] == 5
  assert deploy_target.strip_options(Target("onnx", 1))[
      "max_concat_inputs"] is None
  assert deploy_target.strip_options(Target("tf_xla", 1))[
      "slice_cost_macs"] == 0  # XLA fuses slices into the convolution.
  tf_options = deploy_target.strip_options(Target("tf", 1))
  assert tf_options["slice_cost_macs"] > 0
  assert tf_options["pool_first"] and tf_options["reuse_concats"]
  assert not tf_options["fused_batch_norm"]
  assert deploy_target.strip_options(
      Target("tf", 1), image_size_known=False)["slice_cost_macs"] == 0
  # ONNX Runtime: one gather per layer (not widened), no running concats;
  # transitions pool first, as everywhere.
  onnx = [deploy_target.strip_options(Target("onnx", b)) for b in (1, 32)]
  assert all(o["channel_reads"] == "gather" and o["slice_cost_macs"] == 0
             for o in onnx)
  assert not any(o["reuse_concats"] for o in onnx)
  assert all(o["pool_first"] for o in onnx)
  assert all(o["fused_batch_norm"] for o in onnx)  # one ONNX op, not two
  # Slices asked for explicitly are widened by its costs: whole planes
  # copied per image, the same slice cost at every batch size.
  for b in (1, 32):
    chosen = deploy_target.resolve_options(
        Target("onnx", b), dict(slice_cost_macs=None, channel_reads="slice"))
    assert chosen == {"slice_cost_macs": pytest.approx(20000),
                      "channel_reads": "slice"}
  # A width given without a read: slices (a gather would only add MACs).
  assert deploy_target.resolve_options(
      Target("onnx", 1), dict(slice_cost_macs=5000, channel_reads=None)) == {
          "slice_cost_macs": 5000, "channel_reads": "slice"}
  assert deploy_target.resolve_options(
      Target("onnx", 1), dict(slice_cost_macs=0, channel_reads=None))[
          "channel_reads"] == "gather"
  # A gather asked of another target reads exactly too.
  assert deploy_target.resolve_options(
      Target("tf", 1), dict(slice_cost_macs=None, channel_reads="gather"))[
          "slice_cost_macs"] == 0


@pytest.mark.skipif(not importlib.util.find_spec("ai_edge_litert"),
                    reason="needs the litert extra")
@pytest.mark.parametrize("inputs, partitions", [(5, 1), (6, 2)])
def test_xnnpack_takes_a_concatenation_of_at_most_five_inputs(inputs,
                                                              partitions):
  # Why LiteRT targets get max_concat_inputs=5, for the pinned LiteRT: a
  # larger CONCATENATION is left to LiteRT's own kernels, which splits the
  # graph into more XNNPACK delegate partitions.
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top

  @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 4 * inputs])])
  def graph(x):
    return tf.nn.relu(tf.concat([x[..., 4 * i:4 * i + 2]
                                 for i in range(inputs)], axis=-1))

  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [graph.get_concrete_function()], graph)
  interpreter = Interpreter(model_content=converter.convert(), num_threads=2)
  interpreter.allocate_tensors()
  ops = collections.Counter(
      op["op_name"] for op in interpreter._get_ops_details())  # pylint: disable=protected-access
  assert ops["DELEGATE"] == partitions


@pytest.mark.parametrize("kwargs, match", [
    (dict(runtime="tensorrt"), "runtime='tensorrt'"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(batch_size=2.0), "batch_size=2.0"),
    (dict(batch_size=True), "batch_size=True"),
])
def test_a_bad_target_is_refused_with_its_value(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Target(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(op_seconds=-1.0, macs_per_second=1e9), "op_seconds=-1.0"),
    (dict(op_seconds=1e-6, macs_per_second=0), "macs_per_second=0"),
    (dict(op_seconds=float("nan"), macs_per_second=1e9), "op_seconds=nan"),
    (dict(op_seconds=1e-6, macs_per_second=1e9, op_seconds_per_image=-2),
     "op_seconds_per_image=-2"),
])
def test_bad_costs_are_refused_with_their_value(kwargs, match):
  with pytest.raises(ValueError, match=match):
    RuntimeCosts(**kwargs)


def test_costs_must_be_runtime_costs():
  with pytest.raises(TypeError, match="costs="):
    Target("tf", 1, costs={"op_seconds": 1e-6})


def _pruned(seed=0, **kwargs):
  model = tfsdn.densenet.DenseNet(**(kwargs or dict(depth=10, growth_rate=4)))
  testing.prune_at_random(model, 0.5, seed)
  return model


def _concat_inputs(model):
  return [len(layer.input) for layer in model.layers
          if isinstance(layer, keras.layers.Concatenate)]


def test_the_default_strip_is_for_tensorflow_at_batch_1_or_exact_if_asked():
  model = _pruned()
  stripped = tfsdn.strip(model)
  targeted = tfsdn.strip(model, target=deploy_target.DEFAULT_TARGET)
  assert tfsdn.model_report(stripped).total_macs == tfsdn.model_report(
      targeted).total_macs
  assert len(stripped.model.layers) == len(targeted.model.layers)
  batch_norms = [layer for layer in stripped.model.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
  assert batch_norms and not any(bn.fused for bn in batch_norms)
  exact = tfsdn.strip(model, slice_cost_macs=0, pool_first=False)
  assert tfsdn.model_report(exact).total_macs == (
      tfsdn.costs.compact_macs(model))
  # Running concatenations: an all-live model joins 2 inputs per layer.
  dense = tfsdn.densenet.DenseNet(depth=10, growth_rate=4)
  assert max(_concat_inputs(tfsdn.strip(dense).model)) == 2
  assert max(_concat_inputs(tfsdn.strip(
      dense, reuse_concats=False).model)) == 3


def test_a_target_trades_macs_for_ops_and_explicit_options_win():
  model = _pruned(1)
  exact = tfsdn.strip(model, slice_cost_macs=0)
  targeted = tfsdn.strip(model, target=Target("tf", 1))
  # Wider reads (more MACs, fewer layers), the same function (checked by
  # strip), the same record.
  assert len(targeted.model.layers) < len(exact.model.layers)
  assert [r.live.tolist() for r in targeted.layers.values()] == [
      r.live.tolist() for r in exact.layers.values()]
  litert = tfsdn.strip(model, target=Target("litert", 1))
  assert max(_concat_inputs(litert.model)) <= 5
  pinned = tfsdn.strip(model, target=Target("tf", 1), slice_cost_macs=0,
                       pool_first=False)
  assert tfsdn.model_report(pinned).total_macs == (
      tfsdn.costs.compact_macs(model))
  with pytest.raises(TypeError, match="target='tf'"):
    tfsdn.strip(model, target="tf")


def test_a_target_on_a_variable_size_model_reads_exactly():
  model = _pruned(depth=7, growth_rate=4, input_shape=(None, None, 3))
  stripped = tfsdn.strip(model, target=Target("onnx", 1))
  assert stripped.pruned
  images = np.random.default_rng(0).uniform(0, 255, (2, 40, 24, 3))
  np.testing.assert_allclose(stripped.model(images, training=False),
                             model(images, training=False), atol=1e-4)


def test_the_keras3_path_takes_the_same_target():
  sdn = pytest.importorskip("tfsdn.keras3")
  from tfsdn.keras3.migrate import from_tf_keras  # pylint: disable=g-import-not-at-top
  ours = from_tf_keras(_pruned(2))
  exact = sdn.strip(ours, slice_cost_macs=0)
  litert = sdn.strip(ours, target=sdn.Target("litert", 1))
  assert sdn.model_report(litert).total_macs > sdn.model_report(
      exact).total_macs
  import keras as keras3  # pylint: disable=g-import-not-at-top
  concat_inputs = [len(node.input_tensors)
                   for op in litert.model.operations
                   if isinstance(op, keras3.layers.Concatenate)
                   for node in op._inbound_nodes]  # pylint: disable=protected-access
  assert concat_inputs and max(concat_inputs) <= 5
  with pytest.raises(TypeError, match="target=5"):
    sdn.strip(ours, target=5)


def _fake_times(full, sliced, two, half):
  return lambda runners, batch, rounds, seconds: dict(
      full=full, sliced=sliced, two=two, half=half)


def test_calibration_measures_caches_and_keeps_the_umask(monkeypatch,
                                                         tmp_path):
  monkeypatch.setenv("TFSDN_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(calibration, "_runners", lambda *args: {})
  monkeypatch.setattr(calibration, "_median_seconds",
                      _fake_times(1e-3, 1.6e-3, 1.0e-3, 0.6e-3))
  old = os.umask(0o027)
  try:
    target = calibration.calibrate("tf", batch_size=4)
  finally:
    os.umask(old)
  assert target == Target("tf", 4, target.costs)
  assert target.costs.op_seconds == pytest.approx(0.6e-3 / 6)
  macs = 9 * 12 * 16 * 16 * 48
  assert target.costs.macs_per_second == pytest.approx(macs * 4 / 0.4e-3)
  path = calibration.cache_path()
  assert oct(os.stat(path).st_mode & 0o777) == oct(0o640)
  assert list(json.load(open(path, encoding="utf-8")).values()) == [
      dict(op_seconds=target.costs.op_seconds,
           macs_per_second=target.costs.macs_per_second,
           op_seconds_per_image=0.0)]
  assert os.listdir(os.path.dirname(path)) == ["calibration.json"]

  def untimed(*args):
    raise AssertionError("timed again although cached")
  monkeypatch.setattr(calibration, "_median_seconds", untimed)
  assert calibration.calibrate("tf", batch_size=4) == target
  monkeypatch.setattr(calibration, "_median_seconds",
                      _fake_times(1e-3, 1e-3, 1e-3, 1.2e-3))
  with pytest.raises(RuntimeError, match="too noisy"):
    calibration.calibrate("tf", batch_size=4, refresh=True)
  with pytest.raises(ValueError, match="runtime='gpu'"):
    calibration.calibrate("gpu")


def test_calibration_models_run_in_tensorflow():
  runners = calibration._runners("tf", calibration._models(), 2, 1)  # pylint: disable=protected-access
  batch = np.zeros((2, 16, 16, 96), "float32")
  assert sorted(runners) == ["full", "half", "sliced", "two"]
  for run in runners.values():
    assert run(batch).shape == (2, 16, 16, 12)
