"""Export for Keras 3, through Keras 3's own `model.export`, verified.

Three formats, each written to a temporary path next to the destination,
loaded back in its runtime and compared with the Keras model on sample
images before it is renamed into place (so a failed or wrong export leaves
nothing behind):

* `"tf_saved_model"` (TF Serving): the same `serving_default` signature as
  the tfmot path's `tfsdn.export_saved_model`: `images` (float32 raw
  pixels, [batch, H, W, C]) in, `logits` and `probabilities` out. Needs
  TensorFlow (on the JAX backend Keras converts through jax2tf).
* `"onnx"` (ONNX Runtime): input `images`, output `logits`, as the tfmot
  path's `tfsdn.export_onnx`.
* `"litert"` (LiteRT, float32): Keras' converter; checked with
  `ai_edge_litert`'s interpreter.

ONNX and LiteRT are converted on the TensorFlow backend: from another
backend the (stock-layer) model goes through a child process that uses it,
and the result is checked against the model on the caller's backend.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np

from tfsdn import serving_names
from tfsdn.files import apply_umask
from tfsdn.files import atomic_path
from tfsdn.files import publish_directory
from tfsdn.keras3.checks import require_keras3_model

FORMATS = ("tf_saved_model", "onnx", "litert")
ONNX_OPSET = 17  # as the tfmot path's export_onnx
INPUT_NAME = "images"
LOGITS = "logits"
PROBABILITIES = "probabilities"
SIGNATURE = "serving_default"


def _sample_images(model, sample_images):
  shape = tuple(model.inputs[0].shape[1:])
  if sample_images is None:
    sample_images = np.random.RandomState(0).uniform(
        0, 255, (4,) + shape).astype(np.float32)
  sample_images = np.asarray(sample_images, np.float32)
  if sample_images.shape[1:] != shape:
    raise ValueError(f"sample_images must be [batch, {shape}] images. "
                     f"Received shape: {sample_images.shape}")
  return sample_images


def export(model, path, format="tf_saved_model", overwrite=False,  # pylint: disable=redefined-builtin
           sample_images=None, atol=1e-3):
  """Exports a Keras 3 image classifier and checks it in its runtime.

  Example:

  ```python
  compact = tfsdn.keras3.strip(model).model
  tfsdn.keras3.export(compact, "serving/densenet/1")      # TF Serving
  tfsdn.keras3.export(compact, "densenet.onnx", format="onnx")
  tfsdn.keras3.export(compact, "densenet.tflite", format="litert")
  ```

  Args:
    model: A functional Keras 3 model with one image input of fixed
      [H, W, C] shape, returning logits.
    path: The SavedModel folder (for TF Serving, a version folder such as
      `base/1`) or the `.onnx` / `.tflite` file.
    format: One of `FORMATS`.
    overwrite: Replace an existing `path`.
    sample_images: Images the export is checked on (default: 4 random
      ones); the exported logits must match the model's within `atol`
      (relative to the largest logit magnitude, at least 1).
    atol: The tolerance of that check.

  Returns:
    `path`.

  Raises:
    ValueError: for an unknown format or a mismatch after export.
    FileExistsError: if `path` exists and `overwrite` is False.
  """
  require_keras3_model(model)
  if format not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}. "
                     f"Received: format={format!r}")
  if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4 or None in (
      model.inputs[0].shape[1:]):
    raise ValueError(f"Model {model.name!r} must have one image input of a "
                     f"fixed [H, W, C] shape. Received inputs: "
                     f"{[tuple(t.shape) for t in model.inputs]}")
  path = os.fspath(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path!r} exists; pass overwrite=True.")
  images = _sample_images(model, sample_images)
  # A direct call also marks the model as called, which Keras' exporters
  # check for on JAX.
  expected = np.asarray(model(images, training=False), np.float32)
  if format == "tf_saved_model":
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    try:
      _write_saved_model(model, tmp)
      _check(_run_saved_model(tmp, images), expected, format, atol)
      publish_directory(tmp, path, overwrite=overwrite)
    finally:
      if os.path.exists(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    return path
  suffix = ".onnx" if format == "onnx" else ".tflite"
  with atomic_path(path, suffix=suffix) as tmp:
    if keras.backend.backend() != "tensorflow":
      _export_in_tensorflow_process(model, tmp, format)
    elif format == "onnx":
      _write_onnx(model, tmp)
    else:
      model.export(tmp, format="litert", verbose=False)
    got = (_run_onnx if format == "onnx" else _run_litert)(tmp, images)
    _check(got, expected, format, atol)
  return path


def _export_in_tensorflow_process(model, path, format):  # pylint: disable=redefined-builtin
  """Exports through a child process on the TensorFlow backend.

  Keras converts to LiteRT only from the TensorFlow (or PyTorch) backend,
  and to ONNX from JAX only with the jax2onnx package (which pulls in flax
  and orbax); the compact model is made of stock layers, so it is saved,
  loaded on the TensorFlow backend in a child process and converted there.
  The caller then checks the result against the model on this backend.
  """
  with tempfile.TemporaryDirectory() as scratch:
    saved = os.path.join(scratch, "model.keras")
    model.save(saved)
    script = (
        "import importlib, keras\n"
        "e = importlib.import_module('tfsdn.keras3.export')\n"
        f"m = keras.saving.load_model({saved!r})\n"
        f"if {format!r} == 'onnx':\n"
        f"  e._write_onnx(m, {path!r})\n"
        "else:\n"
        f"  m.export({path!r}, format='litert', verbose=False)\n")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow",
             "TF_CPP_MIN_LOG_LEVEL": "3"}, check=False)
    if result.returncode:
      raise RuntimeError(
          f"The {format} export on the TensorFlow backend failed (it needs "
          "TensorFlow installed; on JAX without TensorFlow, export "
          "tf_saved_model is unavailable too):\n" + result.stderr[-3000:])


def _check(got, expected, format, atol):  # pylint: disable=redefined-builtin
  scale = max(1.0, float(np.max(np.abs(expected))))
  error = float(np.max(np.abs(np.asarray(got) - expected))) / scale
  if not error <= atol:
    raise ValueError(
        f"The {format} export does not match the Keras model: largest "
        f"difference {error:.3g} (relative), tolerance {atol}.")


def _serving_fn(model):
  def serve(images):
    logits = keras.ops.cast(model(images, training=False), "float32")
    return {LOGITS: logits, PROBABILITIES: keras.ops.softmax(logits)}
  return serve


def _write_saved_model(model, directory):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  archive = keras.export.ExportArchive()
  archive.track(model)
  shape = (None,) + tuple(model.inputs[0].shape[1:])
  archive.add_endpoint(
      name=SIGNATURE, fn=_serving_fn(model),
      input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)])
  archive.write_out(directory, verbose=False)
  apply_umask(directory)


def _run_saved_model(directory, images):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(directory).signatures[SIGNATURE]
  return serve(**{INPUT_NAME: tf.constant(images)})[LOGITS].numpy()


def _write_onnx(model, path):
  import onnx  # pylint: disable=g-import-not-at-top
  if keras.backend.backend() == "tensorflow":
    proto = _frozen_onnx(model)
  else:
    model.export(path, format="onnx", verbose=False)
    proto = onnx.load(path)
  if len(proto.graph.input) != 1:
    raise ValueError(
        "The ONNX graph takes more than the images: "
        f"{[i.name for i in proto.graph.input]}.")
  serving_names.rename_value(proto.graph, proto.graph.input[0].name, INPUT_NAME)
  serving_names.rename_value(proto.graph, proto.graph.output[0].name, LOGITS)
  onnx.save(proto, path)


def _frozen_onnx(model):
  """ONNX through a frozen graph (TensorFlow backend).

  Keras' own ONNX export on the TensorFlow backend turns the constants a
  function captures (the `normalize` layer's mean and variance) into extra
  graph inputs; freezing folds them, as the tfmot path's `export_onnx` does,
  and channel gathers run channels-first (`tfsdn.onnx_transpose`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf2onnx  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  shape = (None,) + tuple(model.inputs[0].shape[1:])
  run = tf.function(lambda images: model(images, training=False),
                    input_signature=[tf.TensorSpec(shape, tf.float32,
                                                   name=INPUT_NAME)])
  frozen = convert_to_constants.convert_variables_to_constants_v2(
      run.get_concrete_function())
  from tfsdn import onnx_transpose  # pylint: disable=g-import-not-at-top
  proto, _ = tf2onnx.convert.from_graph_def(
      frozen.graph.as_graph_def(), input_names=[frozen.inputs[0].name],
      output_names=[frozen.outputs[0].name], opset=ONNX_OPSET)
  return onnx_transpose.optimize(proto)


def _run_onnx(path, images):
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(path,
                                         providers=["CPUExecutionProvider"])
  return session.run([LOGITS], {INPUT_NAME: images})[0]


def _run_litert(path, images):
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  runner = litert.Interpreter(model_path=path)
  detail = runner.get_input_details()[0]
  runner.resize_tensor_input(detail["index"], images.shape)
  runner.allocate_tensors()
  runner.set_tensor(detail["index"], images)
  runner.invoke()
  return runner.get_tensor(runner.get_output_details()[0]["index"])
