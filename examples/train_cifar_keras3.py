r"""Train a sparse DenseNet on CIFAR with Keras 3, on any backend.

The Keras 3 twin of `train_cifar.py`: staged pruning during `model.fit`
(`tfsdn.keras3.Pruning`), strip to a compact model of stock layers, and
optional export. The input pipeline reads the CIFAR TFRecords without
TensorFlow, so with `--backend=jax` (or `torch`) it runs on a machine that
has neither TensorFlow nor tfmot:

  python examples/train_cifar_keras3.py --backend=jax \
      --dataset=tfrecord:../shared/data/cifar10 --model_dir=runs/k3 \
      --depth=16 --epochs=2 --train_size=1024 --test_size=512 \
      --num_stages=2 --prune_begin_epoch=0 --prune_end_epoch=1

It writes `results.json` (accuracies of the pruned and the compact model,
MACs, per-layer sparsity, training speed, the flags) and `compact.keras`
into `--model_dir`. A finished run is not overwritten.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _backend_in(argv):
  """The --backend value in `argv`, or None (checked again by absl)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--backend="):
      return arg.split("=", 1)[1]
    if arg == "--backend" and i + 1 < len(argv):
      return argv[i + 1]
  return None


# Keras fixes its backend when it is first imported, which importing tfsdn
# may do (with TensorFlow installed, it loads the tfmot path): choose first.
if _backend_in(sys.argv[1:]):
  os.environ["KERAS_BACKEND"] = _backend_in(sys.argv[1:])

# pylint: disable=g-import-not-at-top,g-bad-import-order
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from tfsdn import cli
from tfsdn.common import stages as training_plan
from tfsdn.common.scores import CRITERIA
from tfsdn.files import atomic_path
from tfsdn.files import write_json

BACKENDS = ("tensorflow", "jax", "torch")
FORMATS = ("tf_saved_model", "onnx", "litert")

FLAGS = flags.FLAGS
flags.DEFINE_enum("backend", os.environ.get("KERAS_BACKEND", "tensorflow")
                  if os.environ.get("KERAS_BACKEND") in BACKENDS else
                  "tensorflow", list(BACKENDS), "Keras 3 backend.")
flags.DEFINE_string("dataset", None,
                    "tfrecord:DIR, a directory with train.tfrecord and "
                    "test.tfrecord (JPEG `image`, int64 `label`).")
flags.DEFINE_string("model_dir", None, "Where the run writes everything.")
flags.DEFINE_integer("depth", 40, "DenseNet depth L.")
flags.DEFINE_integer("growth_rate", 12, "Growth rate k.")
flags.DEFINE_bool("bottleneck", False, "DenseNet-B bottleneck layers.")
flags.DEFINE_float("compression", 1.0, "Transition compression (0.5 for BC).")
flags.DEFINE_integer("epochs", 300, "Training epochs.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 0.1, "Initial SGD learning rate.")
flags.DEFINE_float("weight_decay", 1e-4, "SGD weight decay.")
flags.DEFINE_integer("train_size", None,
                     "Training images (after the validation ones); all by "
                     "default.")
flags.DEFINE_integer("validation_size", 0,
                     "Training records held out for validation, read first.")
flags.DEFINE_integer("test_size", None, "Test images; all by default.")
# The tfmot script's name for it.
flags.DEFINE_alias("eval_size", "test_size")
flags.DEFINE_float("final_sparsity", 0.5,
                   "Input-channel sparsity of every prunable layer; 0 = dense.")
flags.DEFINE_float("mac_budget", None,
                   "Global allocation under this fraction of the dense MACs "
                   "(tfsdn.keras3.GlobalAllocation), instead of "
                   "--final_sparsity.")
flags.DEFINE_float("allocation_floor", 0.1,
                   "With --mac_budget: least fraction of inputs kept.")
flags.DEFINE_integer("num_stages", 3, "Pruning stages.")
flags.DEFINE_integer("prune_begin_epoch", None,
                     "Epoch of the first stage (default epochs // 8).")
flags.DEFINE_integer("prune_end_epoch", None,
                     "Epoch of the last stage (default epochs // 4).")
flags.DEFINE_enum("criterion", "expected_l1", list(CRITERIA),
                  "Contribution criterion.")
flags.DEFINE_integer("steps_per_execution", 1,
                     "Batches per compiled call (a stage acts at the start "
                     "of the call containing its step).")
flags.DEFINE_list("export", ["tf_saved_model"],
                  f"Formats to export the compact model to: "
                  f"{', '.join(FORMATS)} (into export/1, compact.onnx, "
                  "compact.tflite); empty for none.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def _check_flags():
  if not FLAGS.model_dir:
    raise app.UsageError("--model_dir is required.")
  if not FLAGS.dataset or not FLAGS.dataset.startswith("tfrecord:"):
    raise app.UsageError(
        "--dataset must be tfrecord:DIR (this script reads the TFRecords "
        f"without TensorFlow). Received: --dataset={FLAGS.dataset}")
  directory = FLAGS.dataset[len("tfrecord:"):]
  for name in ("train.tfrecord", "test.tfrecord"):
    if not os.path.isfile(os.path.join(directory, name)):
      raise app.UsageError(f"--dataset={FLAGS.dataset}: no {name} in "
                           f"{directory!r}.")
  if FLAGS.epochs < 1 or FLAGS.batch_size < 1:
    raise app.UsageError(f"--epochs and --batch_size must be >= 1. Received: "
                         f"{FLAGS.epochs}, {FLAGS.batch_size}")
  if FLAGS.mac_budget is not None and not 0 < FLAGS.mac_budget < 1:
    raise app.UsageError(
        f"--mac_budget must be in (0, 1). Received: {FLAGS.mac_budget}")
  if FLAGS.mac_budget is not None and flags.FLAGS["final_sparsity"].present:
    raise app.UsageError("--mac_budget and --final_sparsity exclude each "
                         "other.")
  if not 0 <= FLAGS.final_sparsity < 1:
    raise app.UsageError(f"--final_sparsity must be in [0, 1). Received: "
                         f"{FLAGS.final_sparsity}")
  unknown = [f for f in FLAGS.export if f not in FORMATS]
  if unknown:
    raise app.UsageError(f"--export: unknown formats {unknown}; choose from "
                         f"{FORMATS}.")
  if os.path.exists(os.path.join(FLAGS.model_dir, "results.json")):
    raise app.UsageError(f"{FLAGS.model_dir!r} holds a finished run; choose "
                         "another --model_dir.")
  return directory


def _select_backend():
  loaded = sys.modules.get("keras")
  if loaded is not None and loaded.backend.backend() != FLAGS.backend:
    raise app.UsageError(f"Keras is already loaded with the "
                         f"{loaded.backend.backend()} backend.")
  os.environ["KERAS_BACKEND"] = FLAGS.backend


class _Throughput:
  """Training images per second, from the second epoch on (no compiling)."""

  def __init__(self):
    self.epoch_seconds = []

  def callback(self, keras):
    outer = self

    class Timer(keras.callbacks.Callback):

      def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

      def on_epoch_end(self, epoch, logs=None):
        outer.epoch_seconds.append(time.perf_counter() - self.start)

    return Timer()


def main(argv):
  del argv
  directory = _check_flags()
  _select_backend()
  import keras
  import tfsdn.keras3 as sdn
  keras.utils.set_random_seed(FLAGS.seed)
  splits = sdn.data.cifar10(directory, train_size=FLAGS.train_size,
                            validation_size=FLAGS.validation_size,
                            test_size=FLAGS.test_size)
  train_images, train_labels = splits["train"]
  logging.info("Backend %s; %d training, %d validation, %d test images.",
               keras.backend.backend(), len(train_images),
               len(splits["validation"][0]), len(splits["test"][0]))
  model = sdn.densenet.DenseNet(
      depth=FLAGS.depth, growth_rate=FLAGS.growth_rate,
      bottleneck=FLAGS.bottleneck, compression=FLAGS.compression,
      weight_decay=FLAGS.weight_decay, criterion=FLAGS.criterion)
  train = sdn.data.AugmentedImages(train_images, train_labels,
                                   FLAGS.batch_size, seed=FLAGS.seed)
  steps_per_epoch = len(train)
  decay = training_plan.step_decay(FLAGS.learning_rate, FLAGS.epochs)
  model.compile(
      optimizer=keras.optimizers.SGD(FLAGS.learning_rate, momentum=0.9,
                                     nesterov=True),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"], steps_per_execution=FLAGS.steps_per_execution)
  callbacks = [keras.callbacks.LearningRateScheduler(decay)]
  begin, end = training_plan.default_pruning_epochs(
      FLAGS.epochs, FLAGS.prune_begin_epoch, FLAGS.prune_end_epoch)
  pruning = None
  if FLAGS.mac_budget is not None:
    schedule = sdn.GlobalAllocation.evenly(
        FLAGS.mac_budget, FLAGS.num_stages, begin, end,
        steps_per_epoch=steps_per_epoch, floor=FLAGS.allocation_floor)
    pruning = sdn.Pruning(schedule)
  elif FLAGS.final_sparsity > 0:
    pruning = sdn.Pruning(sdn.stages.evenly_stages(
        FLAGS.final_sparsity, FLAGS.num_stages, begin, end,
        steps_per_epoch=steps_per_epoch))
  if pruning is not None:
    callbacks.append(pruning)
  timer = _Throughput()
  callbacks.append(timer.callback(keras))
  validation = splits["validation"]
  model.fit(train, epochs=FLAGS.epochs, callbacks=callbacks, verbose=2,
            validation_data=((validation[0].astype("float32"), validation[1])
                             if len(validation[0]) else None))
  # Exact reads under a MAC budget (its MACs), else strip's default layout.
  stripped = sdn.strip(model, **(
      {"slice_cost_macs": 0} if FLAGS.mac_budget is not None else {}))
  compact = stripped.model
  compact.compile(metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
  results = {"backend": keras.backend.backend(),
             "flags": {f.name: f.value for f in FLAGS.get_key_flags_for_module(
                 sys.argv[0])}}
  for split in ("validation", "test"):
    images, labels = splits[split]
    if not len(images):
      continue
    images = images.astype("float32")
    pruned_logits = np.asarray(model.predict(images, verbose=0))
    compact_logits = np.asarray(compact.predict(images, verbose=0))
    results[f"{split}_accuracy"] = float(np.mean(
        compact_logits.argmax(1) == labels))
    results[f"{split}_accuracy_before_strip"] = float(np.mean(
        pruned_logits.argmax(1) == labels))
    results[f"{split}_strip_max_logit_difference"] = float(
        np.max(np.abs(pruned_logits - compact_logits)))
  dense, compact_macs = sdn.dense_macs(model), sdn.dense_macs(compact)
  seconds = timer.epoch_seconds[1:] or timer.epoch_seconds
  results.update({
      "dense_macs": dense, "compact_macs": compact_macs,
      "mac_ratio": compact_macs / dense,
      "dense_parameters": int(model.count_params()),
      "compact_parameters": int(compact.count_params()),
      "train_images_per_second": steps_per_epoch * FLAGS.batch_size /
                                 float(np.median(seconds)),
      "layer_sparsity": {l.name: l.sparsity()
                         for l in sdn.prunable_layers(model)},
      "stages": [{"step": h["step"], "pruned": sum(
          r[0] for r in h["layers"].values())} for h in
                 (pruning.history if pruning else [])],
  })
  os.makedirs(FLAGS.model_dir, exist_ok=True)
  # The same files as examples/train_cifar.py: the pruned model (strip it
  # again later, e.g. for another Target) and the compact one.
  for name, saved in (("final_model.keras", model),
                      ("compact_model.keras", compact)):
    with atomic_path(os.path.join(FLAGS.model_dir, name),
                     suffix=".keras") as tmp:
      saved.save(tmp)
  before = sdn.model_report(sdn.densenet.DenseNet(
      depth=FLAGS.depth, growth_rate=FLAGS.growth_rate,
      bottleneck=FLAGS.bottleneck, compression=FLAGS.compression))
  after = sdn.model_report(stripped)
  with atomic_path(os.path.join(FLAGS.model_dir, "report.md")) as tmp:
    with open(tmp, "w") as f:
      f.write(f"# {FLAGS.model_dir}: DenseNet-{FLAGS.depth} on the "
              f"{keras.backend.backend()} backend\n\n## Before vs after\n\n"
              + sdn.comparison_markdown(before, after) + "\n\n" +
              after.to_markdown() + "\n")
  try:
    sdn.plot_connectivity(after, os.path.join(FLAGS.model_dir,
                                              "connectivity.png"))
  except ImportError as e:
    logging.warning("No connectivity.png: %s", e)
  for format in FLAGS.export:  # pylint: disable=redefined-builtin
    name = {"tf_saved_model": "export/1", "onnx": "compact.onnx",
            "litert": "compact.tflite"}[format]
    results.setdefault("exports", {})[format] = sdn.export(
        compact, os.path.join(FLAGS.model_dir, name), format=format,
        sample_images=splits["test"][0][:16].astype("float32"),
        overwrite=True)
  write_json(os.path.join(FLAGS.model_dir, "results.json"), results)
  print(summary(FLAGS.model_dir, results))


def summary(model_dir, results):
  """What the run measured and where its files are, for the terminal (as
  examples/train_cifar.py prints it)."""
  accuracy = results.get("test_accuracy", results.get("validation_accuracy"))
  lines = [
      f"{results['backend']} backend: test accuracy "
      + (f"{accuracy:.2%}" if accuracy is not None else "(no test images)")
      + f"; parameters {results['dense_parameters']:,} -> "
      f"{results['compact_parameters']:,}; MACs per image "
      f"{results['dense_macs']:,} -> {results['compact_macs']:,} "
      f"({results['mac_ratio']:.3f}x).",
      f"Written into {model_dir}: flags are in results.json,",
      "  report.md         parameters and MACs per layer, before and after",
      "  connectivity.png  which feature maps each layer still reads",
      "  results.json      these figures",
      "  final_model.keras (pruned), compact_model.keras (stripped)"]
  for format_, path in results.get("exports", {}).items():
    lines.append(f"  {os.path.relpath(path, model_dir):<17} {format_}")
  if "tf_saved_model" in results.get("exports", {}):
    lines.append("  python examples/predict.py --saved_model="
                 f"{results['exports']['tf_saved_model']} IMAGE...")
  return "\n".join(lines)


if __name__ == "__main__":
  cli.run(main)
