"""Keras 3 export: each format loads in its runtime and matches the model."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfsdn.keras3 as sdn


def _half_pruned(seed):
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  rng = np.random.default_rng(seed)
  for layer in sdn.prunable_layers(model):
    layer.contribution_score.assign(
        rng.uniform(0.1, 1, layer.input_channels).astype("float32"))
    layer.prune_to(layer.input_channels // 2)
  return model


@pytest.fixture(name="compact")
def _compact():
  return sdn.strip(_half_pruned(0)).model


def test_saved_model_has_the_serving_signature_in_a_fresh_process(
    compact, tmp_path, pixels):
  pytest.importorskip("tensorflow")
  path = sdn.export(compact, tmp_path / "serving" / "1",
                    sample_images=pixels)
  shown = subprocess.run(
      [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
       "show", "--dir", path, "--tag_set", "serve",
       "--signature_def", "serving_default"],
      capture_output=True, text=True, check=True).stdout
  assert "inputs['images']" in shown and "outputs['logits']" in shown
  assert "outputs['probabilities']" in shown
  np.save(tmp_path / "x.npy", pixels)
  script = (
      "import sys, json, numpy as np, tensorflow as tf\n"
      f"serve = tf.saved_model.load({path!r}).signatures['serving_default']\n"
      f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
      "out = serve(images=tf.constant(x))\n"
      "print(json.dumps({'logits': out['logits'].numpy().tolist(),\n"
      "  'tfsdn': any(m.startswith('tfsdn') for m in sys.modules)}))\n")
  result = json.loads(subprocess.run(
      [sys.executable, "-c", script], capture_output=True, text=True,
      check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  ).stdout.strip().splitlines()[-1])
  assert not result["tfsdn"]
  np.testing.assert_allclose(result["logits"], np.asarray(compact(pixels)),
                             atol=1e-4, rtol=1e-4)


def test_onnx_export_runs_in_onnx_runtime(compact, tmp_path, pixels):
  onnxruntime = pytest.importorskip("onnxruntime")
  pytest.importorskip("tf2onnx")
  path = sdn.export(compact, tmp_path / "m.onnx", format="onnx",
                    sample_images=pixels)
  session = onnxruntime.InferenceSession(path,
                                         providers=["CPUExecutionProvider"])
  assert [i.name for i in session.get_inputs()] == ["images"]
  logits = session.run(["logits"], {"images": pixels})[0]
  np.testing.assert_allclose(logits, np.asarray(compact(pixels)), atol=1e-4,
                             rtol=1e-4)


def test_onnx_gathers_run_channels_first(tmp_path, pixels):
  onnx = pytest.importorskip("onnx")
  onnxruntime = pytest.importorskip("onnxruntime")
  pytest.importorskip("tf2onnx")
  if keras.backend.backend() != "tensorflow":
    pytest.skip("tf2onnx converts the TensorFlow backend's graph only")
  model = _half_pruned(1)
  gathered = sdn.strip(model, channel_reads="gather",
                       slice_cost_macs=0).model
  path = sdn.export(gathered, tmp_path / "g.onnx", format="onnx",
                    sample_images=pixels)
  ops = [node.op_type for node in onnx.load(path).graph.node]
  assert ops.count("Gather") > 0 and ops.count("Transpose") <= 1
  session = onnxruntime.InferenceSession(path,
                                         providers=["CPUExecutionProvider"])
  np.testing.assert_allclose(session.run(["logits"], {"images": pixels})[0],
                             np.asarray(model(pixels)), atol=1e-4, rtol=1e-4)


def test_litert_export_runs_in_litert(compact, tmp_path, pixels):
  pytest.importorskip("ai_edge_litert")
  path = sdn.export(compact, tmp_path / "m.tflite", format="litert",
                    sample_images=pixels)
  assert os.path.getsize(path) > 1000


def test_bad_format_and_existing_path_are_refused(compact, tmp_path):
  with pytest.raises(ValueError, match="format='pb'"):
    sdn.export(compact, tmp_path / "x", format="pb")
  (tmp_path / "taken.onnx").write_text("")
  with pytest.raises(FileExistsError, match="taken.onnx"):
    sdn.export(compact, tmp_path / "taken.onnx", format="onnx")
  assert os.listdir(tmp_path) == ["taken.onnx"]  # nothing half-written


def test_a_softmax_model_exports_probabilities_only_in_every_format(
    tmp_path, pixels):
  pytest.importorskip("tensorflow")
  onnxruntime = pytest.importorskip("onnxruntime")
  pytest.importorskip("tf2onnx")
  litert = pytest.importorskip("ai_edge_litert.interpreter")
  inputs = keras.Input(pixels.shape[1:])
  model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(
      keras.layers.GlobalAveragePooling2D()(inputs / 255.0)))
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(sdn.export(
      model, tmp_path / "serving" / "1")).signatures["serving_default"]
  session = onnxruntime.InferenceSession(
      sdn.export(model, tmp_path / "m.onnx", format="onnx"),
      providers=["CPUExecutionProvider"])
  lite = litert.Interpreter(model_path=sdn.export(
      model, tmp_path / "m.tflite", format="litert"))
  assert list(serve.structured_outputs) == ["probabilities"]
  assert [o.name for o in session.get_outputs()] == ["probabilities"]
  assert lite.get_signature_list()["serving_default"] == {
      "inputs": ["images"], "outputs": ["probabilities"]}
  np.testing.assert_allclose(
      serve(images=tf.constant(pixels))["probabilities"].numpy(),
      np.asarray(model(pixels)), atol=1e-5)


def test_a_pruned_model_is_exported_as_its_compact_model(tmp_path, pixels):
  # The masked model is never served: export strips it for the format's
  # runtime first, and the served function is the pruned model's.
  onnx = pytest.importorskip("onnx")
  pytest.importorskip("tf2onnx")
  pruned = _half_pruned(1)
  path = sdn.export(pruned, tmp_path / "pruned.onnx", format="onnx",
                    sample_images=pixels, batch_size=4)
  for_onnx = sdn.strip(pruned, target=sdn.Target("onnx", 4)).model
  convs = [node for node in onnx.load(path).graph.node
           if node.op_type == "Conv"]
  kernels = {init.name: init for init in onnx.load(path).graph.initializer}
  weights = sum(int(np.prod(kernels[c.input[1]].dims)) for c in convs
                if c.input[1] in kernels)
  assert weights == sum(int(np.prod(l.kernel.shape)) for l in for_onnx.layers
                        if isinstance(l, keras.layers.Conv2D))
  with pytest.raises(ValueError, match="batch_size"):
    sdn.export(pruned, tmp_path / "bad.onnx", format="onnx", batch_size=0)


def _conv_weights(model):
  return sum(int(np.prod(l.kernel.shape)) for l in model.layers
             if isinstance(l, keras.layers.Conv2D))


def test_a_default_strip_is_exported_laid_out_for_the_format(tmp_path,
                                                             pixels):
  onnx = pytest.importorskip("onnx")
  pytest.importorskip("tf2onnx")
  from tfsdn.common import provenance  # pylint: disable=g-import-not-at-top
  pruned = _half_pruned(3)
  compact = sdn.strip(pruned).model
  target = sdn.Target("onnx", 1)
  for_onnx = sdn.strip(pruned, target=target).model
  assert _conv_weights(for_onnx) != _conv_weights(compact)
  assert provenance.source_to_strip_again(compact, target) is pruned
  assert provenance.source_to_strip_again(compact, sdn.Target("tf", 1)) is None
  path = sdn.export(compact, tmp_path / "m.onnx", format="onnx",
                    sample_images=pixels)
  graph = onnx.load(path).graph
  kernels = {init.name: init for init in graph.initializer}
  assert sum(int(np.prod(kernels[n.input[1]].dims)) for n in graph.node
             if n.op_type == "Conv" and n.input[1] in kernels) == (
                 _conv_weights(for_onnx))
  # Changed after the strip: exported as it is.
  kernel = next(l for l in compact.layers
                if isinstance(l, keras.layers.Conv2D)).kernel
  kernel.assign(kernel * 1.5)
  assert provenance.source_to_strip_again(compact, target) is None
