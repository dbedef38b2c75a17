"""Export for serving: a versioned SavedModel for TF Serving, TFLite, ONNX.

Every format takes `images` and returns, by name, `logits` and
`probabilities` for a model that outputs logits, or `probabilities` only for
one that ends in a softmax (`tfsdn.serving_names`).
"""

import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from tfsdn.common import checks
from tfsdn import compact as compact_lib
from tfsdn.common import provenance
from tfsdn import serving_names
from tfsdn.common.deploy_target import Target
from tfsdn.prunable_concat_conv import prunable_layers
from tfsdn.compat import keras
from tfsdn.compat import require_functional
from tfsdn.files import atomic_path
from tfsdn.files import publish_directory

INPUT_NAME = serving_names.INPUT_NAME
LOGITS = serving_names.LOGITS
PROBABILITIES = serving_names.PROBABILITIES
SIGNATURE = serving_names.SIGNATURE


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


def _named_outputs(model):
  """`images -> {name: float32 output}`, named by `tfsdn.serving_names`."""
  softmax = serving_names.ends_in_softmax(model)

  def outputs(images):
    output = tf.cast(model(images, training=False), tf.float32)
    if softmax:
      return {PROBABILITIES: output}
    return {LOGITS: output, PROBABILITIES: tf.nn.softmax(output)}

  return outputs


def serving_function(model, xla=False):
  """The `serving_default` function: raw pixels in, named outputs out.

  Args:
    model: A tf_keras image classifier taking raw RGB pixels (0-255), with
      one output: logits, or probabilities if it ends in a softmax.
    xla: Compile the function with XLA (`jit_compile=True`).

  Returns:
    A `tf.function` with a fixed input signature named `images`, returning a
    dict of float32 [batch, classes] tensors: `logits` and `probabilities`
    for a model that outputs logits, `probabilities` only for one that ends
    in a softmax (`tfsdn.serving_names.ends_in_softmax`).

  Raises:
    ValueError: for a model without one fixed-size image input or with
      several outputs.
  """
  return tf.function(_named_outputs(model),
                     input_signature=[_image_spec(model)], jit_compile=xla)


def _next_version(export_base):
  versions = [int(name) for name in os.listdir(export_base)
              if re.fullmatch(r"\d+", name)]
  return max(versions, default=0) + 1


def compact_for(model, target):
  """The model an export to `target` serves: `model` or a strip of it.

  - A pruned model (`PrunableConcatConv` layers, wrapped by tfmot or not):
    its compact model stripped for `target`, not the masked one.
  - A compact model that `strip` built with its defaults in this process,
    from a pruned model whose weights and its own are unchanged since
    (`tfsdn.common.provenance`): that pruned model stripped again for `target`,
    if `target` lays out other than the default (the default layout,
    chosen for TensorFlow at batch 1, ran 0.75x to 0.92x dense in ONNX
    Runtime on a DenseNet-40).
  - Any other model (a compact model with a layout chosen on purpose, or
    loaded from a file): `model` as it is.
  """
  return provenance.model_to_export(model, target, compact_lib.strip,
                                    prunable_layers)


def export_saved_model(model, export_base, version=None, xla=False,
                       overwrite=False, dtype="float32", batch_size=1):
  """Writes `model` as a SavedModel that TF Serving loads.

  The layout is `export_base/<version>/saved_model.pb` + `variables/`, the one
  `tensorflow_model_server --model_base_path=export_base` watches. The
  signature `serving_default` takes `images`, float32 [batch, H, W, C] raw RGB
  pixels (0-255), and returns `logits` and `probabilities`, float32
  [batch, classes], or only `probabilities` for a model that ends in a
  softmax (`serving_function`). The version is written to a temporary directory next to
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
    dtype: The dtype every layer computes in, `"float32"` by default, so a
      model trained in mixed precision serves in float32 (fast and exact on
      CPU); None keeps the model's own dtype policies.
    batch_size: For a pruned model or a default strip, which is
      stripped first (`compact_for`): the batch size its layout is chosen
      for, with
      `Target("tf_xla" if xla else "tf", batch_size)`.

  Returns:
    The path of the written version directory.

  Raises:
    TypeError: for Keras 3 objects and subclassed models.
    ValueError: for a bad `version` or a model without one fixed-size image
      input.
    FileExistsError: if the version exists and `overwrite` is False.
  """
  require_functional(model)
  model = compact_for(model, Target("tf_xla" if xla else "tf", batch_size))
  if version is not None:
    try:
      version = checks.integer("version", version, low=1)
    except ValueError as e:
      raise ValueError(
          f"version must be a positive integer. Received: version={version!r}"
      ) from e
  if dtype is not None:
    model = with_dtype(model, dtype)
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


TFLITE_QUANTIZATIONS = (None, "dynamic", "float16", "int8")


def export_tflite(model, path, optimizations=None, quantization=None,
                  representative_images=None, batch_size=1):
  """Converts `model` to a TFLite flatbuffer for edge devices.

  The TFLite model takes the same raw-pixel float32 input and returns the
  same named float32 outputs as the SavedModel, whatever the quantization:
  its signature `serving_default` takes `images` and returns `logits` and
  `probabilities` (a model that outputs logits, such as tfsdn's), or
  `probabilities` only (a model that ends in a softmax). The model's own
  output is the first output tensor. Written to a temporary file, then
  renamed into place.

  Example:

  ```python
  images = tfsdn.data.representative_images("tfrecord:cifar10", count=256)
  tfsdn.export_tflite(compact, "compact_int8.tflite", quantization="int8",
                      representative_images=images)
  ```

  Args:
    model: A tf_keras model (usually `strip_to_compact`'s result, or its
      `tfsdn.quantize_aware` copy after fine-tuning, whose learned ranges
      the int8 conversion then uses).
    path: Where to write the `.tflite` file.
    optimizations: Optional list of `tf.lite.Optimize` values (ignored
      when `quantization` is set, which sets them).
    quantization: None (float32), `"dynamic"` (int8 weights, float
      activations), `"float16"` (float16 weights) or `"int8"` (full-integer
      post-training quantization: int8 weights and activations, every op
      int8; needs `representative_images`).
    representative_images: For `"int8"`: an iterable of float32 image
      batches [N, H, W, C] (raw pixels) to calibrate activation ranges on,
      e.g. `tfsdn.data.representative_images(...)`.
    batch_size: For a pruned model or a default strip, which is
      stripped first (`compact_for`): the batch size its layout is chosen
      for, with
      `Target("litert_int8" if quantization == "int8" else "litert",
      batch_size)`.

  Returns:
    `path`.

  Raises:
    ValueError: for an unknown `quantization`, or `"int8"` without
      `representative_images`.
  """
  require_functional(model)
  if quantization not in TFLITE_QUANTIZATIONS:
    raise ValueError(
        f"quantization must be one of {TFLITE_QUANTIZATIONS}. Received: "
        f"quantization={quantization!r}")
  if quantization == "int8" and representative_images is None:
    raise ValueError(
        "quantization='int8' needs representative_images (float32 image "
        "batches to calibrate on). Received: representative_images=None")
  model = compact_for(model, Target(
      "litert_int8" if quantization == "int8" else "litert", batch_size))
  model = with_dtype(model, "float32")
  run = tf.function(_named_outputs(model), input_signature=[_image_spec(model)])
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [run.get_concrete_function()], model)
  if optimizations:
    converter.optimizations = list(optimizations)
  if quantization:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == "float16":
    converter.target_spec.supported_types = [tf.float16]
  elif quantization == "int8":
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

    def calibration():
      for batch in representative_images:
        for image in np.asarray(batch, np.float32):
          yield [image[None]]

    converter.representative_dataset = calibration
  flatbuffer = converter.convert()
  with atomic_path(path, suffix=".tflite") as tmp:
    with open(tmp, "wb") as f:
      f.write(flatbuffer)
  return os.fspath(path)


def with_dtype(model, dtype):
  """`model` computing in `dtype`: a copy if some layer computes in another.

  A model trained in mixed precision (`mixed_bfloat16`, `mixed_float16`)
  keeps float32 weights; served on CPU it is faster and exact in float32.

  Args:
    model: A functional tf_keras model.
    dtype: A floating dtype name, e.g. `"float32"`.

  Returns:
    `model` itself if every layer already computes in `dtype`, else a new
    model with the same weights whose layers all compute in `dtype`.
  """
  dtype = tf.as_dtype(dtype).name
  if all(getattr(layer, "compute_dtype", dtype) in (dtype, None)
         for layer in model.layers):
    return model
  config = model.get_config()
  for layer in config["layers"]:
    if "dtype" in layer["config"]:
      layer["config"]["dtype"] = dtype
  return _with_weights(model, model.__class__.from_config(config))


def _with_weights(model, copy):
  copy.set_weights(model.get_weights())
  for layer, copied in zip(model.layers, copy.layers):
    if isinstance(layer, keras.layers.BatchNormalization):
      copied.fused = layer.fused  # Not in the config (strip's fused=False).
  return copy


def with_image_size(model, image_size):
  """`model` taking images of `image_size`: itself, or a copy.

  The exports need images of a fixed size; a model built for any size
  (`input_shape=(None, None, 3)`, fully convolutional up to a global
  pooling) is exported at the size it will serve.

  Example:

  ```python
  compact = tfsdn.export.with_image_size(tfsdn.strip(model).model, (32, 32))
  tfsdn.export_saved_model(compact, "/models/sdn")
  ```

  Args:
    model: A functional tf_keras model with one NHWC image input.
    image_size: `(height, width)`, or an int for a square.

  Returns:
    `model` itself if it already takes images of that size, else a model
    with the same layers' configurations and weights that does.

  Raises:
    ValueError: for a bad `image_size`, or a model without one NHWC input.
  """
  require_functional(model)
  size = checks.pair("image_size", image_size)
  shape = model.inputs[0].shape
  if len(model.inputs) != 1 or shape.rank != 4:
    raise ValueError(
        f"Model {model.name!r} must have exactly one NHWC image input. "
        f"Received input shapes: {[t.shape for t in model.inputs]}")
  if tuple(shape[1:3]) == size:
    return model
  images = keras.Input(shape=size + (shape[3],), name=model.input_names[0])
  return _with_weights(
      model, keras.models.clone_model(model, input_tensors=images))


ONNX_OPSET = 17


def export_onnx(model, path, opset=ONNX_OPSET, batch_size=1):
  """Converts `model` to ONNX with tf2onnx, for ONNX Runtime.

  Needs the `onnx` extra (`pip install "tfsdn[onnx]"`: tf2onnx 1.17, onnx,
  onnxruntime, the versions tested). The graph takes `images`, float32
  [batch, H, W, C] raw pixels, and returns float32 `logits` and
  `probabilities` (a model that outputs logits, such as tfsdn's), or
  `probabilities` only (a model that ends in a softmax), the model's own
  output first, as the SavedModel and TFLite exports. Channel gathers (`strip(...,
  channel_reads="gather")`, the fastest compact layout in ONNX Runtime)
  run channels-first, without transposes (`tfsdn.onnx_transpose`). Written
  to a temporary file, then renamed.

  Example:

  ```python
  tfsdn.export_onnx(compact, "compact.onnx")
  session = onnxruntime.InferenceSession("compact.onnx")
  logits, probabilities = session.run(None, {"images": images})
  ```

  Args:
    model: A tf_keras model: a compact one (`strip`'s result), exported
      as it is, or a pruned one, stripped first for
      `Target("onnx", batch_size)` (`compact_for`).
    path: Where to write the `.onnx` file.
    opset: The ONNX opset.
    batch_size: For a pruned model or a default strip (`compact_for`):
      the batch size its layout is chosen for.

  Returns:
    `path`.

  Raises:
    ImportError: if tf2onnx is not installed.
  """
  require_functional(model)
  model = compact_for(model, Target("onnx", batch_size))
  try:
    import tf2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "export_onnx needs tf2onnx: pip install 'tfsdn[onnx]'") from e
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  model = with_dtype(model, "float32")
  run = tf.function(_named_outputs(model), input_signature=[_image_spec(model)])
  names = sorted(run.get_concrete_function().structured_outputs)
  # Freezing folds captured constants (a Normalization layer's mean) that
  # tf2onnx.convert.from_function would turn into extra graph inputs.
  frozen = convert_to_constants.convert_variables_to_constants_v2(
      run.get_concrete_function())
  proto, _ = tf2onnx.convert.from_graph_def(
      frozen.graph.as_graph_def(), input_names=[frozen.inputs[0].name],
      output_names=[t.name for t in frozen.outputs], opset=opset)
  from tfsdn import onnx_transpose  # pylint: disable=g-import-not-at-top
  proto = onnx_transpose.optimize(proto)
  serving_names.rename_value(proto.graph, proto.graph.input[0].name, INPUT_NAME)
  # The outputs in the order of the function's (flattened: sorted) dict.
  for output, name in zip(list(proto.graph.output), names):
    serving_names.rename_value(proto.graph, output.name, name)
  with atomic_path(path, suffix=".onnx") as tmp:
    with open(tmp, "wb") as f:
      f.write(proto.SerializeToString())
  return os.fspath(path)
