r"""Prune a tf_keras.applications DenseNet while fine-tuning it, then export it.

Takes DenseNet121 (or 169/201) with ImageNet weights (`--weights=imagenet`,
needs internet), a local weights file of the same model without its top
(`--weights=/path/densenet121_notop.h5`) or random weights (`--weights=none`),
puts CIFAR preprocessing and a new classifier on it, makes its
concatenation-fed convolutions prunable with `tfsdn.make_prunable`, prunes
them in stages while fine-tuning, strips the pruned channels and exports the
compact model as a SavedModel that takes raw 0-255 pixels.

Offline, on the CIFAR-10 TFRecords of this workplace (a short run):

  python examples/prune_keras_densenet.py \
      --dataset=tfrecord:../shared/data/cifar10 --model_dir=runs/dn121 \
      --weights=none --epochs=2 --train_size=512 --eval_size=256

With internet: `--dataset=cifar10 --weights=imagenet --image_size=64`.
"""

import os

# Before TensorFlow loads: hide its C++ log lines unless the user chose a
# level (tfsdn.cli.DEFAULT_TF_LOG_LEVEL says why).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pylint: disable=g-import-not-at-top,g-bad-import-order
import math

from absl import app
from absl import flags
from absl import logging
import tensorflow_model_optimization as tfmot

import tfsdn
from tfsdn import cli
from tfsdn import data as sdn_data
from tfsdn import distribution
from tfsdn import recipe
from tfsdn.compat import keras
from tfsdn.files import atomic_path
from tfsdn.files import write_json

MODELS = {
    "DenseNet121": keras.applications.DenseNet121,
    "DenseNet169": keras.applications.DenseNet169,
    "DenseNet201": keras.applications.DenseNet201,
}
# tf_keras.applications.densenet.preprocess_input ("torch" mode), in pixels.
_IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
_IMAGENET_VARIANCE = [(0.229 * 255)**2, (0.224 * 255)**2, (0.225 * 255)**2]

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "DenseNet121", list(MODELS), "Which DenseNet.")
flags.DEFINE_string("weights", "none",
                    "imagenet | none | path to a weights file of the model "
                    "without its top (include_top=False).")
flags.DEFINE_integer("image_size", 32,
                     "Images are resized to this inside the model (>= 32).")
flags.DEFINE_string("dataset", "cifar10",
                    "cifar10 | cifar100 (tensorflow_datasets) | tfrecord:DIR.")
flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory.")
flags.DEFINE_string("model_dir", None, "Where the run writes everything.")
flags.DEFINE_integer("epochs", 4, "Fine-tuning epochs.")
flags.DEFINE_integer("batch_size", 32,
                     "Global batch size, summed over all replicas and workers.")
flags.DEFINE_float("learning_rate", 0.01, "Initial SGD learning rate.")
flags.DEFINE_integer("train_size", None, "Use only this many train images.")
flags.DEFINE_integer("eval_size", None, "Use only this many test images.")
flags.DEFINE_float("final_sparsity", 0.5,
                   "Input-channel sparsity of every prunable layer.")
flags.DEFINE_integer("num_stages", 2, "Pruning stages.")
flags.DEFINE_enum("criterion", "expected_l1", list(tfsdn.criteria.CRITERIA),
                  "Contribution criterion.")
flags.DEFINE_bool("nested", False,
                  "Nested selections (tfsdn.UpdateScores(nested=True)): "
                  "readers of one feature map keep nested sets of it, read "
                  "as prefixes by the compact model.")
flags.DEFINE_string("export_dir", None,
                    "SavedModel base directory (default MODEL_DIR/export).")
flags.DEFINE_bool("xla_export", False, "Compile the served function with XLA.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_enum("distribution_strategy", "off", list(distribution.STRATEGIES),
                  "tf.distribute strategy, as in tensorflow/models: off, "
                  "one_device, mirrored, multi_worker_mirrored (cluster from "
                  "the TF_CONFIG environment variable), tpu (untested).")


def check_flags():
  """Fails before building anything on a flag value that cannot work."""
  if not FLAGS.model_dir:
    raise app.UsageError("--model_dir is required.")
  if os.path.exists(os.path.join(FLAGS.model_dir, "results.json")):
    raise app.UsageError(
        f"--model_dir={FLAGS.model_dir!r} holds a finished run; choose a new "
        "one so its results are kept.")
  weights = FLAGS.weights
  if weights not in ("imagenet", "none") and not os.path.isfile(weights):
    raise app.UsageError(
        f"--weights must be imagenet, none or an existing weights file. "
        f"Received: {weights!r}")
  if FLAGS.image_size < 32:
    raise app.UsageError(
        f"--image_size must be >= 32. Received: {FLAGS.image_size}")
  try:
    kind, directory = sdn_data.parse_dataset_name(FLAGS.dataset)
    if kind == "tfrecord":
      sdn_data.check_tfrecord_dir(directory)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(f"--dataset: {e}") from e
  if not 0.0 < FLAGS.final_sparsity < 1.0:
    raise app.UsageError(
        f"--final_sparsity must be in (0, 1). Received: {FLAGS.final_sparsity}")
  if FLAGS.epochs < 1:
    raise app.UsageError(f"--epochs must be >= 1. Received: {FLAGS.epochs}")


def build_model(num_classes):
  """Raw 32x32 pixels -> [resize] -> ImageNet normalisation -> DenseNet -> logits.

  The whole model is one flat functional graph (the DenseNet is built on the
  preprocessed tensor), so `make_prunable` sees every layer.
  """
  inputs = keras.Input((32, 32, 3), name="images")
  x = inputs
  if FLAGS.image_size != 32:
    x = keras.layers.Resizing(FLAGS.image_size, FLAGS.image_size,
                              name="resize")(x)
  x = keras.layers.Normalization(mean=_IMAGENET_MEAN,
                                 variance=_IMAGENET_VARIANCE,
                                 name="imagenet_normalization")(x)
  weights = None if FLAGS.weights == "none" else FLAGS.weights
  base = MODELS[FLAGS.model](include_top=False, weights=weights,
                             input_tensor=x)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
  logits = keras.layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, logits, name=FLAGS.model.lower())


def main(argv):
  del argv
  # First: a MultiWorkerMirroredStrategy must exist before any TF op runs.
  strategy = distribution.get_strategy(FLAGS.distribution_strategy)
  check_flags()
  files = distribution.WorkerFiles(strategy, FLAGS.model_dir)
  if files.chief:
    os.makedirs(FLAGS.model_dir, exist_ok=True)
  keras.utils.set_random_seed(FLAGS.seed)
  train_examples = sdn_data.count_examples(FLAGS.dataset, "train",
                                           FLAGS.train_size, FLAGS.data_dir)
  # --batch_size is the global batch, split over replicas and workers.
  steps_per_epoch = math.ceil(train_examples / FLAGS.batch_size)
  train = distribution.shard_by_data(sdn_data.make_dataset(
      FLAGS.dataset, "train", FLAGS.batch_size, training=True,
      size=FLAGS.train_size, data_dir=FLAGS.data_dir, seed=FLAGS.seed))
  test = distribution.shard_by_data(sdn_data.make_dataset(
      FLAGS.dataset, "test", 128, size=FLAGS.eval_size,
      data_dir=FLAGS.data_dir))

  with strategy.scope():
    original = build_model(sdn_data.num_classes(FLAGS.dataset))
    logging.info("%s", tfsdn.conversion_plan(original))
    model = tfsdn.make_prunable(original, criterion=FLAGS.criterion)
  before = tfsdn.model_report(model)
  schedule = recipe.staged_schedule(FLAGS.final_sparsity, FLAGS.num_stages,
                                    FLAGS.epochs, steps_per_epoch)
  logging.info("Pruning schedule: %s", schedule)
  with strategy.scope():
    pruned = tfsdn.prune_dense_connections(model, schedule)
    recipe.compile_for_training(pruned, FLAGS.learning_rate)
  # Only the chief writes logs: tfmot's PruningSummaries never closes its
  # writer, which at exit would write a non-chief's deleted folder again.
  log_dir = files.path("logs") if files.chief else None
  summaries = ([tfmot.sparsity.keras.PruningSummaries(log_dir=log_dir)]
               if log_dir else [])
  pruned.fit(train, epochs=FLAGS.epochs, validation_data=test, verbose=2,
             callbacks=[
                 tfmot.sparsity.keras.UpdatePruningStep(), *summaries,
                 tfsdn.UpdateScores(log_dir=log_dir, nested=FLAGS.nested),
                 keras.callbacks.LearningRateScheduler(
                     recipe.step_decay(FLAGS.learning_rate, FLAGS.epochs)),
             ])
  stripped, accuracy = recipe.strip_and_evaluate(pruned, test, strategy)
  strip_record = tfsdn.strip(stripped)
  compact = strip_record.model
  after = tfsdn.model_report(strip_record)
  with atomic_path(files.path("report.md"), suffix=".md") as tmp:
    with open(tmp, "w") as f:
      f.write(tfsdn.comparison_markdown(before, after) + "\n\n" +
              after.to_markdown() + "\n")
  export_path = tfsdn.export_saved_model(
      compact, (FLAGS.export_dir if files.chief and FLAGS.export_dir
                else files.path("export")), xla=FLAGS.xla_export)
  if not files.chief:
    files.cleanup()
    logging.info("Not the chief: wrote nothing into %s.", FLAGS.model_dir)
    return
  # The pruned model (tfmot's wrappers removed, PrunableConcatConv kept),
  # so another strip (a deployment target) needs no retraining.
  with atomic_path(files.path("final_model.keras"), suffix=".keras") as tmp:
    stripped.save(tmp)
  results = {
      "model": FLAGS.model, "weights": FLAGS.weights,
      "pruned_model": files.path("final_model.keras"),
      "prunable_layers": len(tfsdn.prunable_layers(stripped)),
      "test_accuracy": float(accuracy),
      "export_test_accuracy": recipe.saved_model_accuracy(export_path, test),
      "params_before": before.total_params, "params_after": after.total_params,
      "macs_before": before.total_macs, "macs_after": after.total_macs,
      "export_path": export_path,
      "replicas": strategy.num_replicas_in_sync,
  }
  write_json(files.path("results.json"), results)
  logging.info("Test accuracy %.4f (SavedModel %.4f); parameters %d -> %d; "
               "MACs %d -> %d; exported to %s", results["test_accuracy"],
               results["export_test_accuracy"], before.total_params,
               after.total_params, before.total_macs, after.total_macs,
               export_path)


if __name__ == "__main__":
  cli.run(main)
