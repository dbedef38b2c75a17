import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfsdn
from tests import helpers

_LOAD_WITHOUT_TFSDN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    serve = loaded.signatures["serving_default"]
    out = serve(images=tf.constant(np.load(sys.argv[2])))
    assert "tfsdn" not in sys.modules
    np.save(sys.argv[3], out["logits"].numpy())
    print(json.dumps(sorted(out)))
""")


@pytest.fixture(scope="module")
def pruned():
  model = helpers.tiny_densenet()
  helpers.randomize_batch_norm(model)
  helpers.prune_randomly(model, 0.5)
  return model


@pytest.fixture(scope="module")
def compact(pruned):
  return tfsdn.strip_to_compact(pruned)


def _run(args, **kwargs):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run(args, check=True, capture_output=True, text=True,
                        env=env, **kwargs)


@pytest.mark.parametrize("xla", [False, True])
def test_export_loads_without_tfsdn_in_a_fresh_process(compact, tmp_path, images,
                                                       xla):
  path = tfsdn.export_saved_model(compact, tmp_path / "sdn", xla=xla)
  assert path == str(tmp_path / "sdn" / "1")
  np.save(tmp_path / "in.npy", images)
  script = tmp_path / "load.py"
  script.write_text(_LOAD_WITHOUT_TFSDN)
  result = _run([sys.executable, str(script), path, str(tmp_path / "in.npy"),
                 str(tmp_path / "out.npy")], cwd=str(tmp_path))
  assert json.loads(result.stdout.strip().splitlines()[-1]) == [
      "logits", "probabilities"]
  np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                             compact(images, training=False).numpy(),
                             atol=1e-4)


def test_saved_model_cli_show_and_run(compact, tmp_path, images):
  path = tfsdn.export_saved_model(compact, tmp_path / "sdn", version=7)
  shown = _run(["saved_model_cli", "show", "--dir", path, "--all"]).stdout
  assert "inputs['images']" in shown
  assert "outputs['logits']" in shown and "outputs['probabilities']" in shown
  assert "(-1, 32, 32, 3)" in shown
  np.save(tmp_path / "in.npy", images[:2])
  _run(["saved_model_cli", "run", "--dir", path, "--tag_set", "serve",
        "--signature_def", "serving_default",
        "--inputs", f"images={tmp_path / 'in.npy'}",
        "--outdir", str(tmp_path / "out")])
  probabilities = np.load(tmp_path / "out" / "probabilities.npy")
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  expected = tf.nn.softmax(compact(images[:2], training=False)).numpy()
  np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_versions_count_up_and_existing_versions_are_kept(compact, tmp_path):
  base = tmp_path / "sdn"
  assert tfsdn.export_saved_model(compact, base).endswith("1")
  assert tfsdn.export_saved_model(compact, base).endswith("2")
  stamp = os.path.getmtime(base / "1" / "saved_model.pb")
  with pytest.raises(FileExistsError, match="Version 1 already exists"):
    tfsdn.export_saved_model(compact, base, version=1)
  assert os.path.getmtime(base / "1" / "saved_model.pb") == stamp
  assert sorted(os.listdir(base)) == ["1", "2"]  # no temporary left behind
  tfsdn.export_saved_model(compact, base, version=1, overwrite=True)
  assert sorted(os.listdir(base)) == ["1", "2"]


def test_numpy_integer_versions_are_accepted(compact, tmp_path):
  path = tfsdn.export_saved_model(compact, tmp_path, version=np.int64(7))
  assert path.endswith("7")


@pytest.mark.parametrize("version", [0, -1, "3", 1.5, True])
def test_bad_versions_are_rejected(compact, tmp_path, version):
  with pytest.raises(ValueError, match="version="):
    tfsdn.export_saved_model(compact, tmp_path, version=version)


def test_tflite_matches_keras(compact, tmp_path, images):
  path = tfsdn.export_tflite(compact, tmp_path / "model.tflite")
  interpreter = tf.lite.Interpreter(model_path=path)
  interpreter.resize_tensor_input(
      interpreter.get_input_details()[0]["index"], images.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
  interpreter.invoke()
  out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  np.testing.assert_allclose(out, compact(images, training=False).numpy(),
                             atol=1e-4)


@pytest.mark.parametrize("umask, file_mode, dir_mode", [
    (0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_keep_the_users_umask(compact, tmp_path, umask,
                                            file_mode, dir_mode):
  previous = os.umask(umask)
  try:
    path = tfsdn.export_saved_model(compact, tmp_path / "sdn")
    tflite = tfsdn.export_tflite(compact, tmp_path / "model.tflite")
  finally:
    os.umask(previous)
  assert os.stat(path).st_mode & 0o777 == dir_mode
  for root, dirs, files in os.walk(path):
    for name in dirs:
      assert os.stat(os.path.join(root, name)).st_mode & 0o777 == dir_mode
    for name in files:
      assert os.stat(os.path.join(root, name)).st_mode & 0o777 == file_mode
  assert os.stat(tflite).st_mode & 0o777 == file_mode


def test_a_version_taken_by_a_concurrent_export_is_skipped(compact, tmp_path,
                                                          monkeypatch):
  base = tmp_path / "sdn"
  (base / "1").mkdir(parents=True)
  (base / "1" / "saved_model.pb").write_bytes(b"another export's")
  real = tfsdn.export._next_version
  calls = []

  def stale_then_real(export_base):
    calls.append(export_base)
    return 1 if len(calls) == 1 else real(export_base)

  # The other export renamed its version 1 in after we looked.
  monkeypatch.setattr(tfsdn.export, "_next_version", stale_then_real)
  path = tfsdn.export_saved_model(compact, base)
  assert path.endswith("2") and len(calls) == 2
  assert (base / "1" / "saved_model.pb").read_bytes() == b"another export's"
  assert sorted(os.listdir(base)) == ["1", "2"]


def test_overwrite_swaps_the_version_in_without_a_gap(compact, tmp_path,
                                                      monkeypatch):
  base = tmp_path / "sdn"
  tfsdn.export_saved_model(compact, base, version=1)
  seen = []
  real_rmtree = tfsdn.files.shutil.rmtree

  def rmtree(path, *args, **kwargs):
    seen.append(os.path.exists(base / "1" / "saved_model.pb"))
    return real_rmtree(path, *args, **kwargs)

  # Fail on the two-rename fallback: on Linux the swap must be atomic.
  monkeypatch.setattr(tfsdn.files.os, "rename", None)
  monkeypatch.setattr(tfsdn.files.shutil, "rmtree", rmtree)
  tfsdn.export_saved_model(compact, base, version=1, overwrite=True)
  assert seen and all(seen)
  assert sorted(os.listdir(base)) == ["1"]


def _tflite_logits(path, images):
  interpreter = tf.lite.Interpreter(model_path=path)
  index = interpreter.get_input_details()[0]["index"]
  interpreter.resize_tensor_input(index, images.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(index, images)
  interpreter.invoke()
  ops = [op["op_name"] for op in interpreter._get_ops_details()]  # pylint: disable=protected-access
  dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
  return interpreter.get_tensor(
      interpreter.get_output_details()[0]["index"]), ops, dtypes


def test_tflite_float16_and_int8_follow_keras(compact, tmp_path, images):
  expected = compact(images, training=False).numpy()
  scale = np.abs(expected).max()
  path = tfsdn.export_tflite(compact, tmp_path / "f16.tflite",
                             quantization="float16")
  logits, _, dtypes = _tflite_logits(path, images)
  assert np.float16 in dtypes
  np.testing.assert_allclose(logits, expected, atol=1e-2 * scale)
  path = tfsdn.export_tflite(
      compact, tmp_path / "int8.tflite", quantization="int8",
      representative_images=[images[:4], images[4:]])
  logits, ops, dtypes = _tflite_logits(path, images)
  assert logits.dtype == np.float32  # float in and out, int8 inside
  assert np.int8 in dtypes and np.float16 not in dtypes
  assert "CONV_2D" in ops and "GATHER" not in ops
  assert np.abs(logits - expected).max() < 0.1 * scale


def test_tflite_quantization_is_checked(compact, tmp_path):
  with pytest.raises(ValueError, match="quantization='int4'"):
    tfsdn.export_tflite(compact, tmp_path / "m.tflite", quantization="int4")
  with pytest.raises(ValueError, match="representative_images=None"):
    tfsdn.export_tflite(compact, tmp_path / "m.tflite", quantization="int8")


def test_mixed_precision_model_is_served_in_float32(tmp_path, images):
  keras = tfsdn.compat.keras
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  model = helpers.tiny_densenet()
  keras.mixed_precision.set_global_policy("float32")
  helpers.randomize_batch_norm(model)
  compact = tfsdn.strip_to_compact(model)
  float32 = tfsdn.export.with_dtype(compact, "float32")
  assert {l.compute_dtype for l in float32.layers} == {"float32"}
  path = tfsdn.export_saved_model(compact, tmp_path / "sdn")
  serve = tf.saved_model.load(path).signatures["serving_default"]
  logits = serve(images=tf.constant(images))["logits"].numpy()
  np.testing.assert_allclose(logits, float32(images, training=False).numpy(),
                             atol=1e-4)


def _saved_ops(path):
  graph = tf.saved_model.load(path).signatures["serving_default"].graph
  ops = {op.type for op in graph.get_operations()}
  for function in graph.as_graph_def().library.function:
    ops.update(node.op for node in function.node_def)
  return ops


def test_unfused_batch_norm_is_exported_unfused(tmp_path, images):
  keras = tfsdn.compat.keras
  # Mixed precision: export_saved_model serves it in float32 through
  # with_dtype, which rebuilds the model from its config.
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = helpers.tiny_densenet()
  finally:
    keras.mixed_precision.set_global_policy("float32")
  helpers.randomize_batch_norm(model)
  helpers.prune_randomly(model, 0.5, 0)
  fused = tfsdn.strip_to_compact(model, fused_batch_norm=True)
  unfused = tfsdn.strip_to_compact(model, fused_batch_norm=False)
  paths = {name: tfsdn.export_saved_model(m, tmp_path / name)
           for name, m in (("fused", fused), ("unfused", unfused))}
  # The config does not carry `fused`; with_dtype keeps it.
  assert any(op.startswith("FusedBatchNorm") for op in _saved_ops(
      paths["fused"]))
  assert not any(op.startswith("FusedBatchNorm") for op in _saved_ops(
      paths["unfused"]))
  serve = tf.saved_model.load(paths["unfused"]).signatures["serving_default"]
  np.testing.assert_allclose(
      serve(images=tf.constant(images))["logits"].numpy(),
      tfsdn.export.with_dtype(fused, "float32")(images,
                                                training=False).numpy(),
      atol=1e-4)


def test_onnx_of_a_default_strip_gathers_and_matches_keras(compact, tmp_path,
                                                           images):
  onnxruntime = pytest.importorskip("onnxruntime")
  onnx = pytest.importorskip("onnx")
  pytest.importorskip("tf2onnx")
  # Laid out again for ONNX Runtime: one channels-first gather per layer
  # that reads part of its input, no slices.
  path = tfsdn.export_onnx(compact, tmp_path / "compact.onnx")
  ops = [node.op_type for node in onnx.load(path).graph.node]
  assert "Gather" in ops and "Slice" not in ops
  assert ops.count("Transpose") <= 1
  session = onnxruntime.InferenceSession(path,
                                         providers=["CPUExecutionProvider"])
  logits = session.run(None, {session.get_inputs()[0].name: images})[0]
  np.testing.assert_allclose(logits, compact(images, training=False).numpy(),
                             atol=1e-4)


def test_onnx_gathers_channels_first_without_transposes(pruned, tmp_path,
                                                        images):
  onnxruntime = pytest.importorskip("onnxruntime")
  onnx = pytest.importorskip("onnx")
  pytest.importorskip("tf2onnx")
  gathered = tfsdn.strip_to_compact(pruned, channel_reads="gather",
                                    **helpers.EXACT)
  gathers = sum(layer.name.startswith("tf.compat.v1.gather")
                for layer in gathered.layers)
  path = tfsdn.export_onnx(gathered, tmp_path / "gathered.onnx")
  nodes = onnx.load(path).graph.node
  ops = [node.op_type for node in nodes]
  # One Transpose for the NHWC input, as in the dense model; without the
  # Gather rule tf2onnx leaves two around every gather.
  assert ops.count("Transpose") == 1
  assert ops.count("Gather") == gathers > 0
  assert all(attr.i == 1 for node in nodes if node.op_type == "Gather"
             for attr in node.attribute if attr.name == "axis")
  session = onnxruntime.InferenceSession(path,
                                         providers=["CPUExecutionProvider"])
  logits = session.run(None, {session.get_inputs()[0].name: images})[0]
  np.testing.assert_allclose(logits, pruned(images, training=False).numpy(),
                             atol=1e-4)


@pytest.mark.parametrize("activation", [None, "softmax"])
def test_outputs_are_named_for_what_they_hold_in_every_format(
    tmp_path, images, activation):
  # A logits model exports logits and their softmax; a softmax model its
  # probabilities only: the same names in the SavedModel, TFLite and ONNX.
  keras = tfsdn.compat.keras
  inputs = keras.Input((32, 32, 3))
  model = keras.Model(inputs, keras.layers.Dense(5, activation=activation)(
      keras.layers.GlobalAveragePooling2D()(inputs / 255.0)))
  output = model(images[:2]).numpy()
  expected = ({"probabilities": output} if activation else
              {"logits": output,
               "probabilities": tf.nn.softmax(output).numpy()})
  serve = tf.saved_model.load(tfsdn.export_saved_model(
      model, tmp_path / "serving")).signatures["serving_default"]
  served = serve(images=tf.constant(images[:2]))
  interpreter = tf.lite.Interpreter(model_path=tfsdn.export_tflite(
      model, str(tmp_path / "m.tflite")))
  lite = interpreter.get_signature_runner("serving_default")(
      images=images[:2])
  onnxruntime = pytest.importorskip("onnxruntime")
  session = onnxruntime.InferenceSession(
      tfsdn.export_onnx(model, str(tmp_path / "m.onnx")),
      providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  assert names == list(expected)  # The model's own output first.
  onnx = dict(zip(names, session.run(names, {"images": images[:2]})))
  for outputs in (served, lite, onnx):
    assert sorted(outputs) == sorted(expected)
    for name, value in expected.items():
      np.testing.assert_allclose(np.asarray(outputs[name]), value, atol=1e-5)


def test_a_pruned_model_is_exported_compact_for_its_runtime(pruned, tmp_path,
                                                            images):
  # The masked model is never served: each export strips it for its
  # runtime's Target first, and the function is the pruned model's.
  onnxruntime = pytest.importorskip("onnxruntime")
  onnx = pytest.importorskip("onnx")
  pytest.importorskip("tf2onnx")
  expected = pruned(images, training=False).numpy()
  wrapped = tfsdn.prune_dense_connections(pruned,
                                          tfsdn.StagedSparsity([(2, 0.5)]))
  path = tfsdn.export_onnx(wrapped, tmp_path / "pruned.onnx", batch_size=8)
  for_onnx = tfsdn.strip(pruned, target=tfsdn.Target("onnx", 8)).model
  ops = [node.op_type for node in onnx.load(path).graph.node]
  convs = [l for l in for_onnx.layers if type(l).__name__ == "Conv2D"]
  assert ops.count("Conv") == len(convs)
  session = onnxruntime.InferenceSession(path,
                                         providers=["CPUExecutionProvider"])
  logits = session.run(None, {session.get_inputs()[0].name: images})[0]
  np.testing.assert_allclose(logits, expected, atol=1e-4)
  saved = tfsdn.export_saved_model(pruned, tmp_path / "serving")
  assert "PrunableConcatConv" not in str(_saved_ops(saved))
  out = tf.saved_model.load(saved).signatures["serving_default"](
      images=tf.constant(images))
  np.testing.assert_allclose(out["logits"].numpy(), expected, atol=1e-4)
  # Fewer variables than the masked model: the pruned channels are gone.
  variables = tf.train.list_variables(os.path.join(saved, "variables",
                                                   "variables"))
  assert sum(int(np.prod(shape)) for _, shape in variables) < (
      0.8 * pruned.count_params())
  with pytest.raises(ValueError, match="batch_size"):
    tfsdn.export_onnx(pruned, tmp_path / "bad.onnx", batch_size=0)


def _layout(model):
  return [(type(l).__name__, [tuple(w.shape) for w in l.weights])
          for l in model.layers]


def test_a_default_strip_is_laid_out_again_for_the_runtime_it_is_exported_to(
    tmp_path, images):
  model = helpers.tiny_densenet()
  helpers.randomize_batch_norm(model)
  helpers.prune_randomly(model, 0.6, 3)
  compact = tfsdn.strip(model).model
  onnx_target = tfsdn.Target("onnx", 1)
  for_onnx = tfsdn.strip(model, target=onnx_target).model
  assert _layout(for_onnx) != _layout(compact)  # else this proves nothing
  chosen = tfsdn.export.compact_for(compact, onnx_target)
  assert _layout(chosen) == _layout(for_onnx)
  np.testing.assert_allclose(chosen(images, training=False).numpy(),
                             compact(images, training=False).numpy(),
                             atol=1e-4)
  # The default layout's own runtime: the model as it is.
  assert tfsdn.export.compact_for(compact, tfsdn.Target("tf", 1)) is compact
  # The TFLite export serves the LiteRT layout, with the same function.
  path = tfsdn.export_tflite(compact, tmp_path / "m.tflite")
  np.testing.assert_allclose(_tflite_logits(path, images)[0],
                             compact(images, training=False).numpy(),
                             atol=1e-4)
  # A layout chosen on purpose, a loaded copy, a compact model changed
  # after the strip, a pruned model changed after it: exported as they are.
  chosen_layout = tfsdn.strip(model, slice_cost_macs=0).model
  assert tfsdn.export.compact_for(chosen_layout, onnx_target) is chosen_layout
  compact.save(tmp_path / "compact.keras")
  loaded = tfsdn.compat.keras.models.load_model(tmp_path / "compact.keras")
  assert tfsdn.export.compact_for(loaded, onnx_target) is loaded
  tuned = tfsdn.strip(model).model
  kernel = next(w for w in tuned.weights if "kernel" in w.name)
  kernel.assign(kernel * 1.5)
  assert tfsdn.export.compact_for(tuned, onnx_target) is tuned
  edited = tfsdn.strip(model).model
  next(l for l in edited.layers
       if isinstance(l, tfsdn.compat.keras.layers.BatchNormalization)
      ).epsilon = 10.0  # not a weight: the config says it changed
  assert tfsdn.export.compact_for(edited, onnx_target) is edited
  later = tfsdn.strip(model).model
  layer = tfsdn.prunable_layers(model)[0]
  layer.conv.kernel.assign(layer.conv.kernel * 1.5)
  assert tfsdn.export.compact_for(later, onnx_target) is later
