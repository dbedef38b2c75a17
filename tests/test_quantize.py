"""Quantization-aware training of compact models (tfsdn.quantize)."""

import collections
import importlib.util
import json
import os
import subprocess
import sys

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf

import tfsdn
from tfsdn import quantize
from tfsdn.compat import keras
from tests import helpers
from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_litert = pytest.mark.skipif(
    not importlib.util.find_spec("ai_edge_litert"),
    reason="needs the litert extra")


def _compact(sparsity=0.5, seed=0, **strip_options):
  model = helpers.tiny_densenet()
  if sparsity:
    helpers.prune_randomly(model, sparsity, seed)
  helpers.randomize_batch_norm(model, seed)
  return tfsdn.strip(model, **{**helpers.EXACT, **strip_options}).model


def test_fold_batch_norms_keeps_the_function(images):
  compact = _compact()
  folded = quantize.fold_batch_norms(compact)
  batch_norms = [layer for layer in compact.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
  assert batch_norms
  assert not any(isinstance(layer, keras.layers.BatchNormalization)
                 for layer in folded.layers)
  depthwise = [layer for layer in folded.layers
               if isinstance(layer, keras.layers.DepthwiseConv2D)]
  assert [d.name for d in depthwise] == [b.name for b in batch_norms]
  np.testing.assert_allclose(folded(images, training=False),
                             compact(images, training=False),
                             rtol=1e-4, atol=1e-4)
  # A copy: training the fold leaves the original alone.
  before = [w.copy() for w in compact.get_weights()]
  folded.layers[-1].kernel.assign_add(tf.ones_like(folded.layers[-1].kernel))
  for old, new in zip(before, compact.get_weights()):
    np.testing.assert_array_equal(old, new)


def test_fold_batch_norms_without_scale_or_center(images):
  inputs = keras.Input((8, 8, 3))
  batch_norm = keras.layers.BatchNormalization(scale=False, center=False)
  model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(batch_norm(inputs)))
  batch_norm.moving_mean.assign([0.5, -1.0, 2.0])
  batch_norm.moving_variance.assign([4.0, 0.25, 1.0])
  x = images[:2, :8, :8] / 255.0
  np.testing.assert_allclose(quantize.fold_batch_norms(model)(x), model(x),
                             rtol=1e-5, atol=1e-5)


def test_fold_batch_norms_refuses_another_axis():
  inputs = keras.Input((8, 8, 3))
  model = keras.Model(inputs, keras.layers.BatchNormalization(
      axis=1, name="rows")(inputs))
  with pytest.raises(ValueError, match=r"'rows' normalizes axis \[1\]"):
    quantize.fold_batch_norms(model)


def test_quantize_aware_wraps_all_but_slices():
  qat = quantize.quantize_aware(_compact())
  kinds = collections.Counter(
      type(getattr(layer, "layer", layer)).__name__ for layer in qat.layers
      if not isinstance(layer, keras.layers.InputLayer))
  wrapped = {type(layer.layer).__name__ for layer in qat.layers
             if hasattr(layer, "quantize_config")}
  assert "SlicingOpLambda" in kinds and "SlicingOpLambda" not in wrapped
  assert {"Conv2D", "DepthwiseConv2D", "Concatenate", "ReLU",
          "Normalization", "Dense"} <= wrapped
  assert "BatchNormalization" not in kinds
  # The pooling after each transition keeps its convolution's scale: that
  # convolution quantizes its weights only.
  for layer in qat.layers:
    if getattr(layer, "name", "").startswith("quant_transition") and (
        isinstance(getattr(layer, "layer", None), keras.layers.Conv2D)):
      assert isinstance(layer.quantize_config,
                        quantize.WeightsOnlyQuantizeConfig)


def _tflite_ops(path):
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_path=path)
  interpreter.allocate_tensors()
  tensors = interpreter.get_tensor_details()
  ops = []
  for op in interpreter._get_ops_details():  # pylint: disable=protected-access
    dtypes = {tensors[i]["dtype"] for i in [*op["inputs"], *op["outputs"]]
              if i >= 0}
    ops.append((op["op_name"], dtypes))
  return interpreter, ops


@needs_litert
@pytest.mark.parametrize("pool_first,reuse_concats",
                         [(False, False), (True, False), (False, True)])
def test_qat_model_converts_to_an_all_int8_graph(tmp_path, images,
                                                 pool_first, reuse_concats):
  # Plain tfmot quantize_model fails on these models (slices, and the
  # pooling's same-scale constraint; the benchmark test below converts a
  # dense one). With pool_first a ReLU, not a convolution, feeds each
  # pooling. With reuse_concats a concatenation reads another.
  compact = _compact(pool_first=pool_first, reuse_concats=reuse_concats,
                     slice_cost_macs=1e12 if reuse_concats else 0)
  assert reuse_concats == any(
      isinstance(layer, keras.layers.Concatenate) and any(
          isinstance(t.node.layer, keras.layers.Concatenate)
          for t in layer.input) for layer in compact.layers)
  qat = quantize.quantize_aware(compact)
  x, y = helpers.random_data(32)
  helpers.compile_sgd(qat, 0.01)
  qat.fit(x, y, batch_size=8, epochs=1, verbose=0)
  path = tfsdn.export_tflite(qat, tmp_path / "qat.tflite",
                             quantization="int8",
                             representative_images=[x[:8]])
  interpreter, ops = _tflite_ops(path)
  names = collections.Counter(name for name, _ in ops)
  assert names["DEPTHWISE_CONV_2D"] == 9 and names["CONV_2D"] == 9
  # Only the model's input and output cross between float and int8.
  for name, dtypes in ops:
    if name in ("QUANTIZE", "DEQUANTIZE"):
      continue
    assert np.float32 not in dtypes or name == "DELEGATE", (name, dtypes)
  float_edges = [n for n, d in ops if n in ("QUANTIZE", "DEQUANTIZE")
                 and np.float32 in d]
  # The export gives a logits model two outputs (logits, probabilities).
  outputs = len(interpreter.get_output_details())
  assert outputs == 2
  assert len(float_edges) <= 2 + 2 * outputs, float_edges
  if pool_first:
    # The ReLU a pooling reads takes the pooling's range, so the
    # convolution after the pooling reads it without a requantization.
    details = interpreter._get_ops_details()  # pylint: disable=protected-access
    requantized = {i for op in details if op["op_name"] == "QUANTIZE"
                   for i in op["inputs"]}
    pooled = {o for op in details if op["op_name"] == "AVERAGE_POOL_2D"
              for o in op["outputs"]}
    assert len(pooled) == 2 and not pooled & requantized
  inp = interpreter.get_input_details()[0]
  interpreter.resize_tensor_input(inp["index"], [4, 32, 32, 3])
  interpreter.allocate_tensors()
  interpreter.set_tensor(inp["index"], images[:4])
  interpreter.invoke()
  tflite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  expected = qat(images[:4], training=False).numpy()
  # A few output quantization steps apart, at most.
  assert np.abs(tflite - expected).max() < 0.1 * max(1.0, np.abs(
      expected).max())


def test_quantize_aware_refuses_unsupported_layers_with_weights():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = keras.layers.LayerNormalization(name="odd_norm")(x)
  with pytest.raises(ValueError, match="'odd_norm' \\(LayerNormalization\\)"):
    quantize.quantize_aware(keras.Model(inputs, x))


def test_quantize_aware_names_the_keras3_path():
  inputs = keras3.Input((8, 8, 3))
  model = keras3.Model(inputs, keras3.layers.Conv2D(2, 1)(inputs))
  with pytest.raises(TypeError, match="tf_keras"):
    quantize.quantize_aware(model)


def test_quantize_configs_round_trip(images, tmp_path):
  import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top
  qat = quantize.quantize_aware(_compact())
  path = str(tmp_path / "qat.h5")  # tfmot QAT models fail to load from .keras
  qat.save(path)
  with tfmot.quantization.keras.quantize_scope():
    loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded(images[:2], training=False),
                             qat(images[:2], training=False), atol=1e-5)
  for config in (quantize.OutputQuantizeConfig(),
                 quantize.WeightsOnlyQuantizeConfig()):
    assert type(config).from_config(config.get_config()).get_config() == (
        config.get_config())


@needs_litert
def test_qat_benchmark_end_to_end(tmp_path):
  data = write_tfrecords(tmp_path / "cifar", count=24)
  model_path = tmp_path / "tiny.keras"
  _compact(sparsity=0.0).save(model_path)  # Dense: no slices.
  output = tmp_path / "qat.json"
  subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "qat_int8.py"),
       f"--models={model_path}", f"--dataset=tfrecord:{data}", "--steps=2",
       "--batch_size=8", "--train_offset=0", "--train_size=16",
       "--calibration_images=8", "--eval_images=24", "--rounds=1",
       "--seconds=0.05", f"--output={output}"],
      capture_output=True, text=True, cwd=ROOT, timeout=600, check=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get(
                   "PYTHONPATH", "")])))
  result = json.loads(output.read_text())["models"]["tiny"]
  assert set(result["accuracy"]) == {
      "float", "ptq_int8", "finetuned_float", "finetuned_ptq_int8",
      "qat_keras", "qat_int8"}
  assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())
  assert result["ops"]["qat_int8"]["DEPTHWISE_CONV_2D"] == 9
  assert "DEPTHWISE_CONV_2D" not in result["ops"]["ptq_int8"]
  # Float only at the input (and its Normalization) and the output.
  assert result["ops"]["qat_int8"].get("QUANTIZE (float -> int8)", 0) <= 2
  accuracy = result["accuracy"]
  for key, d in result["paired"].items():
    a, b = key.split(" - ")
    assert d["points"] == pytest.approx(100 * (accuracy[a] - accuracy[b]))
    assert d["only_a_right"] - d["only_b_right"] == round(
        24 * (accuracy[a] - accuracy[b]))
  assert set(result["images_per_second_batch1"]) == {
      "ptq_int8", "finetuned_ptq_int8", "qat_int8"}
