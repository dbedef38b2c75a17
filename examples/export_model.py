r"""Strip a trained run to its compact model, report, export and verify it.

  python examples/export_model.py --model=runs/quick \
      --export_dir=/models/sdn --xla --tflite_path=/models/sdn.tflite \
      --dataset=tfrecord:../shared/data/cifar10

`--model` is a training run directory (its `final_model.keras` is used) or a
`.keras` file. The export is verified against the Keras model on a batch of
real test images before success is declared.
"""

import os

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import tfsdn
from tfsdn import data as sdn_data
from tfsdn.compat import keras

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A training run directory or a .keras file.")
flags.DEFINE_string("export_dir", None, "SavedModel base directory.")
flags.DEFINE_integer("version", None, "Version to write (default: next free).")
flags.DEFINE_bool("xla", False, "Compile the served function with XLA.")
flags.DEFINE_string("tflite_path", None, "Also write a TFLite model here.")
flags.DEFINE_string("dataset", "tfrecord:../shared/data/cifar10",
                    "Where to take the verification images from.")
flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory.")
flags.DEFINE_integer("verify_images", 64, "Real images to verify with.")
flags.mark_flags_as_required(["model", "export_dir"])


def load_keras_model(path):
  if os.path.isdir(path):
    path = os.path.join(path, "final_model.keras")
  if not os.path.isfile(path):
    raise app.UsageError(
        f"--model={FLAGS.model!r}: no run directory with final_model.keras "
        "nor a .keras file there.")
  return keras.models.load_model(path)


def main(argv):
  del argv
  kind, name = sdn_data.parse_dataset_name(FLAGS.dataset)
  if kind == "tfrecord":
    sdn_data.check_tfrecord_dir(name)
  model = load_keras_model(FLAGS.model)
  has_prunable = bool(tfsdn.prunable_layers(model))
  stripped = tfsdn.strip(model) if has_prunable else None
  compact = stripped.model if has_prunable else model
  report = tfsdn.model_report(stripped if has_prunable else model)
  print(report.to_markdown())
  images, _ = next(iter(sdn_data.make_dataset(
      FLAGS.dataset, "test", FLAGS.verify_images, data_dir=FLAGS.data_dir)))
  expected = compact(images, training=False).numpy()
  if has_prunable:
    diff = np.abs(model(images, training=False).numpy() - expected).max()
    logging.info("compact vs pruned model: max abs difference %.2e", diff)
    if diff > 1e-4:
      raise SystemExit(f"Compact model differs from the pruned one by {diff}")
  path = tfsdn.export_saved_model(compact, FLAGS.export_dir,
                                  version=FLAGS.version, xla=FLAGS.xla)
  serve = tf.saved_model.load(path).signatures["serving_default"]
  diff = np.abs(serve(images=images)["logits"].numpy() - expected).max()
  if diff > 1e-4:
    raise SystemExit(f"SavedModel at {path} differs from Keras by {diff}")
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
      raise SystemExit(f"TFLite model differs from Keras by {diff}")
    logging.info("TFLite %s verified (max abs diff %.2e)", FLAGS.tflite_path,
                 diff)
  print(f"Exported and verified: {path}")


if __name__ == "__main__":
  app.run(main)
