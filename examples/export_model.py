r"""Strip a trained run to its compact model, report, export and verify it.

  python examples/export_model.py --model=runs/quick \
      --export_dir=/models/sdn --xla --tflite_path=/models/sdn.tflite \
      --dataset=tfrecord:../shared/data/cifar10

`--model` is a training run directory (its `final_model.keras` is used) or a
`.keras` file. The export is verified against the Keras model on a batch of
real test images before success is declared. Flags are checked before
anything is loaded: an existing `--version` is refused unless `--overwrite`.
"""

import json
import os

# Before TensorFlow loads: hide its C++ log lines unless the user chose a
# level (tfsdn.cli.DEFAULT_TF_LOG_LEVEL says why).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import tfsdn
from tfsdn import cli
from tfsdn import data as sdn_data
from tfsdn import serving_names
from tfsdn.compat import keras

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A training run directory or a .keras file.")
flags.DEFINE_string("export_dir", None, "SavedModel base directory.")
flags.DEFINE_integer("version", None,
                     "Version to write, >= 1 (default: the next free one).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --version.")
flags.DEFINE_bool("xla", False, "Compile the served function with XLA.")
flags.DEFINE_string("tflite_path", None, "Also write a TFLite model here.")
flags.DEFINE_string("dataset", "tfrecord:../shared/data/cifar10",
                    "Where to take the verification images from. Default: "
                    "for a run directory, the data set it was trained on "
                    "(its flags.json); else tfrecord:../shared/data/cifar10.")
flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory.")
flags.DEFINE_integer("verify_images", 64, "Real images to verify with (>= 1).")
flags.DEFINE_string(
    "target", None,
    "Where the model will be served, RUNTIME@BATCH (tf, tf_xla, litert, "
    "litert_int8 or onnx; e.g. tf@1, litert@1, onnx@32): tfsdn.strip "
    "chooses the layout options below that are not given for it "
    "(tfsdn.Target). Default: strip's own defaults.")
flags.DEFINE_float(
    "slice_cost_macs", None,
    "tfsdn.strip's slice_cost_macs: 0 reads exactly the live channels; more "
    "reads gaps that cost at most that many MACs to save a slice. Default: "
    "chosen for --target, or for strip's default target (TensorFlow at "
    "batch 1) without one.")
flags.DEFINE_enum(
    "channel_reads", None, ["slice", "split", "gather"],
    "tfsdn.strip's channel_reads: a slice per channel range, one split per "
    "feature map, or one gather per layer (fastest in ONNX Runtime here; "
    "slow in plain TensorFlow and LiteRT).")
flags.DEFINE_integer(
    "max_concat_inputs", None,
    "tfsdn.strip's max_concat_inputs: 0 for one concatenation per layer; 5 "
    "builds larger ones from concatenations of at most 5 inputs, which "
    "LiteRT's XNNPACK delegate runs (it leaves larger ones out). Default: "
    "chosen for the target (5 for LiteRT; 0 is then taken as not given).")
flags.DEFINE_bool(
    "pool_first", None,
    "tfsdn.strip's pool_first: transitions pool before their 1x1 "
    "convolution, which then runs on a quarter of the pixels (the same "
    "function). Default: chosen for the target (on, off for ONNX).")
flags.DEFINE_bool(
    "reuse_concats", None,
    "tfsdn.strip's reuse_concats: a layer's concatenation starts from an "
    "earlier layer's, as a DenseNet's running concatenation does (fewer "
    "concatenation inputs, the same function). Default: on.")
flags.DEFINE_bool(
    "fused_batch_norm", None,
    "tfsdn.strip's fused_batch_norm: --nofused_batch_norm computes every "
    "BatchNormalization as a multiply and an add, faster in plain "
    "TensorFlow (oneDNN) for channel counts that are not multiples of 4 "
    "(the same function; TFLite gets the same graph either way). "
    "Default: unfused.")
flags.mark_flags_as_required(["model", "export_dir"])


def keras_model_path(model):
  """The `.keras` file that `--model` names (a run directory or a file)."""
  path = (os.path.join(model, "final_model.keras") if os.path.isdir(model)
          else model)
  if not os.path.isfile(path):
    raise app.UsageError(
        f"--model={model!r} is neither a training run directory holding "
        "final_model.keras nor a .keras file.")
  return path


def _run_dataset(model):
  """Takes --dataset (and --data_dir) from a run directory's flags.json
  when they were not given."""
  if FLAGS["dataset"].present or not os.path.isdir(model):
    return
  try:
    with open(os.path.join(model, "flags.json")) as f:
      trained = json.load(f)
  except (OSError, ValueError):
    return
  if trained.get("dataset"):
    FLAGS.dataset = trained["dataset"]
    if not FLAGS["data_dir"].present and trained.get("data_dir"):
      FLAGS.data_dir = trained["data_dir"]
    logging.info("Verifying on the run's data set, %s", FLAGS.dataset)


def check_flags():
  """Fails on a flag value that cannot work, before anything is loaded.

  Returns:
    The `.keras` file to export.
  """
  if FLAGS.version is not None and FLAGS.version < 1:
    raise app.UsageError(
        f"--version must be >= 1 (TF Serving serves versions 1, 2, ...). "
        f"Received: {FLAGS.version}")
  if FLAGS.slice_cost_macs is not None and not (
      0 <= FLAGS.slice_cost_macs < float("inf")):
    raise app.UsageError(
        f"--slice_cost_macs must be a finite number >= 0. Received: "
        f"{FLAGS.slice_cost_macs}")
  if FLAGS.max_concat_inputs is not None and (
      FLAGS.max_concat_inputs < 0 or FLAGS.max_concat_inputs == 1):
    raise app.UsageError(
        f"--max_concat_inputs must be 0 (no bound) or >= 2. Received: "
        f"{FLAGS.max_concat_inputs}")
  target(FLAGS.target)  # Checked before anything is loaded.
  if FLAGS.verify_images < 1:
    raise app.UsageError(
        f"--verify_images must be >= 1. Received: {FLAGS.verify_images}")
  if os.path.exists(FLAGS.export_dir) and not os.path.isdir(FLAGS.export_dir):
    raise app.UsageError(
        f"--export_dir={FLAGS.export_dir!r} is a file, not a directory.")
  if FLAGS.version is not None and not FLAGS.overwrite:
    existing = os.path.join(FLAGS.export_dir, str(FLAGS.version))
    if os.path.exists(existing):
      raise app.UsageError(
          f"--version={FLAGS.version} already exists at {existing!r}; pass "
          "--overwrite to replace it, or leave --version out to write the "
          "next free version.")
  if FLAGS.tflite_path:
    parent = os.path.dirname(os.path.abspath(FLAGS.tflite_path))
    if not os.path.isdir(parent):
      raise app.UsageError(
          f"--tflite_path={FLAGS.tflite_path!r}: directory {parent!r} does "
          "not exist.")
  path = keras_model_path(FLAGS.model)
  _run_dataset(FLAGS.model)
  try:
    kind, name = sdn_data.parse_dataset_name(FLAGS.dataset)
    if kind == "tfrecord":
      sdn_data.check_tfrecord_dir(name)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(f"--dataset: {e}") from e
  return path

def target(value):
  """--target as a `tfsdn.Target`, or None."""
  if value is None:
    return None
  runtime, _, batch = value.partition("@")
  try:
    return tfsdn.Target(runtime, int(batch or 1))
  except ValueError as e:
    raise app.UsageError(
        f"--target takes RUNTIME@BATCH, RUNTIME one of "
        f"{tfsdn.common.deploy_target.RUNTIMES} (e.g. tf@1). Received: "
        f"{value!r}") from e


def main(argv):
  del argv
  # Only the weights: the optimizer state of training is not exported.
  model = keras.models.load_model(check_flags(), compile=False)
  has_prunable = bool(tfsdn.prunable_layers(model))
  stripped = (tfsdn.strip(model, slice_cost_macs=FLAGS.slice_cost_macs,
                          channel_reads=FLAGS.channel_reads,
                          max_concat_inputs=(
                              FLAGS.max_concat_inputs or None),
                          pool_first=FLAGS.pool_first,
                          reuse_concats=FLAGS.reuse_concats,
                          fused_batch_norm=FLAGS.fused_batch_norm,
                          target=target(FLAGS.target))
               if has_prunable else None)
  compact = stripped.model if has_prunable else model
  images, _ = next(iter(sdn_data.make_dataset(
      FLAGS.dataset, "test", FLAGS.verify_images, data_dir=FLAGS.data_dir)))
  # A model built for any image size is reported and exported at the
  # data's (the exports need a fixed size).
  any_size = None in compact.inputs[0].shape[1:3]
  image_size = tuple(images.shape[1:3]) if any_size else None
  if any_size:
    logging.info("The model takes images of any size: reported and exported "
                 "at the data's, %s", image_size)
    compact = tfsdn.export.with_image_size(compact, image_size)
  report = tfsdn.model_report(stripped if has_prunable else model,
                              input_size=image_size)
  print(report.to_markdown())
  expected = compact(images, training=False).numpy()
  if has_prunable:
    diff = np.abs(model(images, training=False).numpy() - expected).max()
    logging.info("compact vs pruned model: max abs difference %.2e", diff)
    if diff > 1e-4:
      raise SystemExit(cli.error_line(
          f"Compact model differs from the pruned one by {diff}"))
  path = tfsdn.export_saved_model(compact, FLAGS.export_dir,
                                  version=FLAGS.version, xla=FLAGS.xla,
                                  overwrite=FLAGS.overwrite)
  serve = tf.saved_model.load(path).signatures["serving_default"]
  # The model's own output: logits, or probabilities if it ends in softmax.
  own = serving_names.output_names(serving_names.ends_in_softmax(compact))[0]
  diff = np.abs(serve(images=images)[own].numpy() - expected).max()
  if diff > 1e-4:
    raise SystemExit(cli.error_line(
        f"SavedModel at {path} differs from Keras by {diff}"))
  logging.info("SavedModel %s verified on %d real images (max abs diff %.2e)",
               path, images.shape[0], diff)
  if FLAGS.tflite_path:
    tfsdn.export_tflite(compact, FLAGS.tflite_path)
    interpreter = tf.lite.Interpreter(model_path=FLAGS.tflite_path)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images.numpy())
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    diff = np.abs(out - expected).max()
    if diff > 1e-3:
      raise SystemExit(cli.error_line(
          f"TFLite model differs from Keras by {diff}"))
    logging.info("TFLite %s verified (max abs diff %.2e)", FLAGS.tflite_path,
                 diff)
  print(f"Exported and verified: {path}")


if __name__ == "__main__":
  cli.run(main)
