"""Export for serving: a versioned SavedModel for TF Serving, and TFLite."""

import os
import re
import shutil
import tempfile

import tensorflow as tf

from tfsdn import checks
from tfsdn.compat import require_functional
from tfsdn.files import atomic_path
from tfsdn.files import publish_directory

INPUT_NAME = "images"
LOGITS = "logits"
PROBABILITIES = "probabilities"
SIGNATURE = "serving_default"


def _image_spec(model):
  if len(model.inputs) != 1:
    raise ValueError(
        f"Model {model.name!r} must have exactly one image input; it has "
        f"{len(model.inputs)}.")
  shape = model.inputs[0].shape
  if shape.rank != 4 or None in shape[1:]:
    raise ValueError(
        f"Model {model.name!r} must take images of a fixed [H, W, C] shape. "
        f"Received input shape: {shape}")
  return tf.TensorSpec([None] + shape[1:].as_list(), tf.float32,
                       name=INPUT_NAME)


def _ends_in_softmax(model):
  layer = model.layers[-1]
  activation = getattr(layer, "activation", None)
  return activation is not None and getattr(activation, "__name__",
                                            "") == "softmax"


def serving_function(model, xla=False):
  """The `serving_default` function: raw pixels in, logits and probabilities out.

  Args:
    model: A tf_keras image classifier taking raw RGB pixels (0-255).
    xla: Compile the function with XLA (`jit_compile=True`).

  Returns:
    A `tf.function` with a fixed input signature named `images`, returning a
    dict with float32 `logits` and `probabilities`. For a model whose last
    layer already applies softmax, `logits` are the log-probabilities (logits
    up to a constant).
  """
  softmax_model = _ends_in_softmax(model)

  @tf.function(input_signature=[_image_spec(model)], jit_compile=xla)
  def serve(images):
    outputs = tf.cast(model(images, training=False), tf.float32)
    if softmax_model:
      return {LOGITS: tf.math.log(tf.maximum(outputs, 1e-30)),
              PROBABILITIES: outputs}
    return {LOGITS: outputs, PROBABILITIES: tf.nn.softmax(outputs)}

  return serve


def _next_version(export_base):
  versions = [int(name) for name in os.listdir(export_base)
              if re.fullmatch(r"\d+", name)]
  return max(versions, default=0) + 1


def export_saved_model(model, export_base, version=None, xla=False,
                       overwrite=False):
  """Writes `model` as a SavedModel that TF Serving loads.

  The layout is `export_base/<version>/saved_model.pb` + `variables/`, the one
  `tensorflow_model_server --model_base_path=export_base` watches. The
  signature `serving_default` takes `images`, float32 [batch, H, W, C] raw RGB
  pixels (0-255), and returns `logits` and `probabilities`, float32
  [batch, classes]. The version is written to a temporary directory next to
  it and renamed into place, so a crash never leaves a half-written version;
  two exports running at once get different versions, and `overwrite=True`
  swaps the new version in atomically (Linux), so it never goes missing.
  Files and folders get the permissions of the user's umask (0644/0755 under
  umask 022), so TF Serving running as another user can read them.

  Example:

  ```python
  path = tfsdn.export_saved_model(compact, "/models/sdn", xla=True)
  # saved_model_cli show --dir /models/sdn/1 --all
  ```

  Args:
    model: A tf_keras image classifier (usually `strip_to_compact`'s result).
    export_base: The model's base directory (created if missing).
    version: A positive integer; default the next free one.
    xla: Compile the serving function with XLA (`jit_compile=True`), for
      GPU serving; it also runs on CPU.
    overwrite: Replace an existing version instead of refusing.

  Returns:
    The path of the written version directory.

  Raises:
    TypeError: for Keras 3 objects and subclassed models.
    ValueError: for a bad `version` or a model without one fixed-size image
      input.
    FileExistsError: if the version exists and `overwrite` is False.
  """
  require_functional(model)
  if version is not None:
    try:
      version = checks.integer("version", version, low=1)
    except ValueError as e:
      raise ValueError(
          f"version must be a positive integer. Received: version={version!r}"
      ) from e
  serve = serving_function(model, xla=xla)
  export_base = os.fspath(export_base)
  os.makedirs(export_base, exist_ok=True)
  if version is not None:
    _refuse_existing(export_base, version, overwrite)
  module = tf.Module()
  module.model = model
  module.serve = serve
  tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=export_base)
  try:
    tf.saved_model.save(module, tmp, signatures={SIGNATURE: serve})
    if version is not None:
      final = os.path.join(export_base, str(version))
      publish_directory(tmp, final, overwrite=overwrite)
      return final
    # Another export may take the next free version between our look and
    # our rename: the rename then fails and the following version is tried.
    while True:
      final = os.path.join(export_base, str(_next_version(export_base)))
      try:
        publish_directory(tmp, final)
        return final
      except FileExistsError:
        continue
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def _refuse_existing(export_base, version, overwrite):
  final = os.path.join(export_base, str(version))
  if os.path.exists(final) and not overwrite:
    raise FileExistsError(
        f"Version {version} already exists at {final!r}; pass overwrite=True "
        "or choose another version.")


def export_tflite(model, path, optimizations=None):
  """Converts `model` to a TFLite flatbuffer for edge devices.

  The TFLite model takes the same raw-pixel input and returns the model's
  own output (logits for tfsdn models). Written to a temporary file, then
  renamed into place.

  Args:
    model: A tf_keras model (usually `strip_to_compact`'s result).
    path: Where to write the `.tflite` file.
    optimizations: Optional list of `tf.lite.Optimize` values.

  Returns:
    `path`.
  """
  require_functional(model)
  spec = _image_spec(model)
  run = tf.function(lambda images: model(images, training=False),
                    input_signature=[spec])
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [run.get_concrete_function()], model)
  if optimizations:
    converter.optimizations = list(optimizations)
  flatbuffer = converter.convert()
  with atomic_path(path, suffix=".tflite") as tmp:
    with open(tmp, "wb") as f:
      f.write(flatbuffer)
  return os.fspath(path)
