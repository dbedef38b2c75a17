"""Export for Keras 3, through Keras 3's own `model.export`, verified.

Three formats, each written to a temporary path next to the destination,
loaded back in its runtime and compared with the Keras model on sample
images before it is renamed into place (so a failed or wrong export leaves
nothing behind):

* `"tf_saved_model"` (TF Serving): the same `serving_default` signature as
  the tfmot path's `tfsdn.export_saved_model`. Needs TensorFlow (on the JAX
  backend Keras converts through jax2tf).
* `"onnx"` (ONNX Runtime), as the tfmot path's `tfsdn.export_onnx`.
* `"litert"` (LiteRT, float32): Keras' converter, with the signature
  `serving_default`; checked with `ai_edge_litert`'s interpreter.

Every format takes `images` (float32 raw pixels, [batch, H, W, C]) and
returns, by name, `logits` and `probabilities` for a model that outputs
logits, or `probabilities` only for one that ends in a softmax
(`tfsdn.serving_names`), the model's own output first; every output is
checked.

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
from tfsdn.serving_names import INPUT_NAME
from tfsdn.serving_names import LOGITS
from tfsdn.serving_names import PROBABILITIES
from tfsdn.serving_names import SIGNATURE
from tfsdn.files import apply_umask
from tfsdn.files import atomic_path
from tfsdn.files import publish_directory
from tfsdn.common import provenance
from tfsdn.common.deploy_target import Target
from tfsdn.keras3.checks import require_keras3_model
from tfsdn.keras3.pruning import prunable_layers
from tfsdn.keras3.strip import strip

FORMATS = ("tf_saved_model", "onnx", "litert")
ONNX_OPSET = 17  # as the tfmot path's export_onnx


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


# The runtime each format serves in, for a pruned model's strip.
_RUNTIMES = {"tf_saved_model": "tf", "onnx": "onnx", "litert": "litert"}


def export(model, path, format="tf_saved_model", overwrite=False,  # pylint: disable=redefined-builtin
           sample_images=None, atol=1e-3, batch_size=1):
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
      [H, W, C] shape and one output: logits, or probabilities if it ends
      in a softmax. A pruned model (with `PrunableConcatConv` layers) is
      stripped first for the format's runtime, `Target(runtime,
      batch_size)`, so its compact model is what gets served; so is the
      pruned model behind a compact one that `strip` made with its defaults
      in this process, when neither model's weights changed since
      (`tfsdn.common.provenance`).
    path: The SavedModel folder (for TF Serving, a version folder such as
      `base/1`) or the `.onnx` / `.tflite` file.
    format: One of `FORMATS`.
    overwrite: Replace an existing `path`.
    sample_images: Images the export is checked on (default: 4 random
      ones); every exported output must match the model's within `atol`
      (relative to the output's largest magnitude, at least 1).
    atol: The tolerance of that check.
    batch_size: For a pruned model or a default strip: the batch size its
      layout is chosen for.

  Returns:
    `path`.

  Raises:
    ValueError: for an unknown format, a model with several outputs, or a
      mismatch after export.
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
  target = Target(_RUNTIMES[format], batch_size)  # checks batch_size
  model = provenance.model_to_export(model, target, strip, prunable_layers)
  path = os.fspath(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path!r} exists; pass overwrite=True.")
  images = _sample_images(model, sample_images)
  # A direct call also marks the model as called, which Keras' exporters
  # check for on JAX.
  output = np.asarray(model(images, training=False), np.float32)
  if serving_names.ends_in_softmax(model):
    expected = {PROBABILITIES: output}
  else:
    expected = {LOGITS: output,
                PROBABILITIES: np.asarray(keras.ops.softmax(output))}
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
      _write_litert(model, tmp)
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
        f"  e._write_litert(m, {path!r})\n")
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
  """`got` and `expected`, dicts of outputs by name, agree within `atol`."""
  if sorted(got) != sorted(expected):
    raise ValueError(
        f"The {format} export returns {sorted(got)}; expected "
        f"{sorted(expected)}.")
  for name, value in expected.items():
    scale = max(1.0, float(np.max(np.abs(value))))
    error = float(np.max(np.abs(np.asarray(got[name]) - value))) / scale
    if not error <= atol:
      raise ValueError(
          f"The {format} export's {name!r} does not match the Keras model: "
          f"largest difference {error:.3g} (relative), tolerance {atol}.")


def _serving_fn(model):
  """`images -> {name: float32 output}`, named by `tfsdn.serving_names`."""
  softmax = serving_names.ends_in_softmax(model)

  def serve(images):
    output = keras.ops.cast(model(images, training=False), "float32")
    if softmax:
      return {PROBABILITIES: output}
    return {LOGITS: output, PROBABILITIES: keras.ops.softmax(output)}

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
  return {name: value.numpy() for name, value in
          serve(**{INPUT_NAME: tf.constant(images)}).items()}


def _write_onnx(model, path):
  """Writes the ONNX file (on the TensorFlow backend: `export` sees to it)."""
  import onnx  # pylint: disable=g-import-not-at-top
  proto, names = _frozen_onnx(model)
  if len(proto.graph.input) != 1:
    raise ValueError(
        "The ONNX graph takes more than the images: "
        f"{[i.name for i in proto.graph.input]}.")
  serving_names.rename_value(proto.graph, proto.graph.input[0].name, INPUT_NAME)
  for output, name in zip(list(proto.graph.output), names):
    serving_names.rename_value(proto.graph, output.name, name)
  onnx.save(proto, path)


def _write_litert(model, path):
  """Writes the LiteRT file through Keras, with the exports' names."""
  images = keras.Input(tuple(model.inputs[0].shape[1:]), name=INPUT_NAME)
  named = keras.Model(images, _serving_fn(model)(images))
  named.export(path, format="litert", verbose=False)


def _frozen_onnx(model):
  """ONNX through a frozen graph (TensorFlow backend).

  Keras' own ONNX export on the TensorFlow backend turns the constants a
  function captures (the `normalize` layer's mean and variance) into extra
  graph inputs; freezing folds them, as the tfmot path's `export_onnx` does,
  and channel gathers run channels-first (`tfsdn.onnx_transpose`).

  Returns:
    The ONNX proto and its outputs' names, in order.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf2onnx  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  shape = (None,) + tuple(model.inputs[0].shape[1:])
  run = tf.function(_serving_fn(model),
                    input_signature=[tf.TensorSpec(shape, tf.float32,
                                                   name=INPUT_NAME)])
  # The function's dict of outputs flattens in sorted order.
  names = sorted(run.get_concrete_function().structured_outputs)
  frozen = convert_to_constants.convert_variables_to_constants_v2(
      run.get_concrete_function())
  from tfsdn import onnx_transpose  # pylint: disable=g-import-not-at-top
  proto, _ = tf2onnx.convert.from_graph_def(
      frozen.graph.as_graph_def(), input_names=[frozen.inputs[0].name],
      output_names=[t.name for t in frozen.outputs], opset=ONNX_OPSET)
  return onnx_transpose.optimize(proto), names


def _run_onnx(path, images):
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(path,
                                         providers=["CPUExecutionProvider"])
  names = [output.name for output in session.get_outputs()]
  return dict(zip(names, session.run(names, {INPUT_NAME: images})))


def _run_litert(path, images):
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  runner = litert.Interpreter(model_path=path)
  serve = runner.get_signature_runner(SIGNATURE)
  return {name: np.asarray(value) for name, value in
          serve(**{INPUT_NAME: images}).items()}
