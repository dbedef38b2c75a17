r"""Train a sparse DenseNet on CIFAR: staged pruning, strip, report, export.

Offline, on the CIFAR-10 TFRecords of this workplace:

  python examples/train_cifar.py --dataset=tfrecord:../shared/data/cifar10 \
      --model_dir=runs/quick --depth=16 --epochs=2 --train_size=1024 \
      --eval_size=512 --num_stages=2 --prune_begin_epoch=0 --prune_end_epoch=1

With internet, `--dataset=cifar10` or `--dataset=cifar100` downloads through
tensorflow_datasets. `--final_sparsity=0` trains the dense baseline.

A run killed mid-training resumes from its last finished epoch when started
again with the same flags and `--model_dir` (scores, masks and the pruning
step included). A finished run is never overwritten.
"""

import os

# Before TensorFlow loads: hide its C++ log lines unless the user chose a
# level (tfsdn.cli.DEFAULT_TF_LOG_LEVEL says why).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pylint: disable=g-import-not-at-top,g-bad-import-order
import hashlib
import json
import math
import shutil

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import tfsdn
from tfsdn import cli
from tfsdn import data as sdn_data
from tfsdn import distribution
from tfsdn import recipe
from tfsdn.compat import keras
from tfsdn.files import atomic_path
from tfsdn.files import write_json

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "cifar10",
                    "cifar10 | cifar100 (tensorflow_datasets) | tfrecord:DIR.")
flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory.")
flags.DEFINE_string("model_dir", None, "Where the run writes everything.")
flags.DEFINE_integer("depth", 40, "DenseNet depth L.")
flags.DEFINE_integer("growth_rate", 12, "Growth rate k.")
flags.DEFINE_bool("bottleneck", False, "DenseNet-B bottleneck layers.")
flags.DEFINE_float("compression", 1.0, "Transition compression (0.5 for BC).")
flags.DEFINE_float("dropout_rate", 0.0, "Dropout after every conv.")
flags.DEFINE_integer("epochs", 300, "Training epochs.")
flags.DEFINE_integer("batch_size", 64,
                     "Global batch size, summed over all replicas and workers.")
flags.DEFINE_float("learning_rate", 0.1, "Initial SGD learning rate.")
flags.DEFINE_float("weight_decay", 1e-4, "SGD weight decay.")
flags.DEFINE_integer("train_size", None, "Use only this many train images.")
flags.DEFINE_integer("eval_size", None, "Use only this many test images.")
# The Keras 3 script's name for it (an alias: flags.json keeps eval_size).
flags.DEFINE_alias("test_size", "eval_size")
ALIASES = ("test_size",)
flags.DEFINE_float("final_sparsity", 0.5,
                   "Input-channel sparsity of every prunable layer; 0 = dense.")
flags.DEFINE_float("mac_budget", None,
                   "Global allocation: rank the inputs of all layers "
                   "together and prune until the MACs estimated from the "
                   "pruned inputs are at most this fraction of the dense "
                   "MACs (tfsdn.GlobalAllocation); strip then removes the "
                   "filters no one reads, so the compact model ends at or "
                   "below it. Instead of --final_sparsity (the same "
                   "fraction in every layer).")
flags.DEFINE_float("allocation_floor", 0.1,
                   "With --mac_budget: least fraction of its inputs every "
                   "layer keeps.")
flags.DEFINE_integer("num_stages", 3, "Pruning stages.")
flags.DEFINE_integer("prune_begin_epoch", None,
                     "Epoch of the first stage (default epochs // 8).")
flags.DEFINE_integer("prune_end_epoch", None,
                     "Epoch of the last stage (default epochs // 4).")
flags.DEFINE_enum("criterion", "expected_l1", list(tfsdn.criteria.CRITERIA),
                  "Contribution criterion.")
flags.DEFINE_bool("nested", False,
                  "Nested selections (tfsdn.UpdateScores(nested=True)): the "
                  "layers reading one producer keep nested sets of its "
                  "channels, so the compact model reads each as a prefix "
                  "(fewer slices, faster in LiteRT and plain TensorFlow).")
flags.DEFINE_float("group_lasso", 0.0, "Group-lasso strength.")
flags.DEFINE_float("score_momentum", 0.9, "Momentum of expected_l1 stats.")
flags.DEFINE_bool("jit_compile", False, "Train with XLA.")
flags.DEFINE_bool("mixed_precision", False,
                  "mixed_float16 on GPU, mixed_bfloat16 on CPU.")
flags.DEFINE_string("export_dir", None,
                    "SavedModel base directory (default MODEL_DIR/export).")
flags.DEFINE_bool("xla_export", False, "Compile the served function with XLA.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_enum("distribution_strategy", "off", list(distribution.STRATEGIES),
                  "tf.distribute strategy, as in tensorflow/models: off, "
                  "one_device, mirrored, multi_worker_mirrored (cluster from "
                  "the TF_CONFIG environment variable), tpu (untested).")

# Flags that may differ when a run is resumed: they do not change training.
_RESUME_INDEPENDENT = ("data_dir", "export_dir", "xla_export")


def _save_model(model, path):
  with atomic_path(path, suffix=".keras") as tmp:
    model.save(tmp)


def resolved_flags():
  module = FLAGS.find_module_defining_flag("model_dir")
  names = [f.name for f in FLAGS.flags_by_module_dict()[module]
           if f.name not in ALIASES]  # An alias holds its flag's value.
  return {name: FLAGS[name].value for name in names}


def check_flags(values):
  """Fails fast, before any training, on a flag value that cannot work."""
  if not values["model_dir"]:
    raise app.UsageError("--model_dir is required.")
  try:
    kind, directory = sdn_data.parse_dataset_name(values["dataset"])
    if kind == "tfrecord":
      sdn_data.check_tfrecord_dir(directory)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(f"--dataset: {e}") from e
  if not 0.0 <= values["final_sparsity"] < 1.0:
    raise app.UsageError(
        f"--final_sparsity must be in [0, 1). Received: "
        f"{values['final_sparsity']}")
  if values["mac_budget"] is not None and not 0.0 < values["mac_budget"] < 1.0:
    raise app.UsageError(
        f"--mac_budget must be in (0, 1). Received: {values['mac_budget']}")
  if values["mac_budget"] is not None and FLAGS["final_sparsity"].present:
    raise app.UsageError(
        "--mac_budget (global allocation) and --final_sparsity (the same "
        "fraction in every layer) exclude each other. Received: "
        f"--mac_budget={values['mac_budget']} "
        f"--final_sparsity={values['final_sparsity']}")
  if not 0.0 <= values["allocation_floor"] < 1.0:
    raise app.UsageError("--allocation_floor must be in [0, 1). Received: "
                         f"{values['allocation_floor']}")
  if values["epochs"] < 1:
    raise app.UsageError(f"--epochs must be >= 1. Received: {values['epochs']}")
  if values["num_stages"] < 1:
    raise app.UsageError(
        f"--num_stages must be >= 1. Received: {values['num_stages']}")
  begin, end = values["prune_begin_epoch"], values["prune_end_epoch"]
  if begin is not None and begin < 0:
    raise app.UsageError(f"--prune_begin_epoch must be >= 0. Received: {begin}")
  if end is not None and end >= values["epochs"]:
    raise app.UsageError(
        f"--prune_end_epoch={end} is past the last epoch "
        f"(--epochs={values['epochs']} runs epochs 0..{values['epochs'] - 1}).")
  if begin is not None and end is not None and end < begin:
    raise app.UsageError(
        f"--prune_end_epoch={end} is before --prune_begin_epoch={begin}.")
  for name in ("train_size", "eval_size"):
    if values[name] is not None and values[name] < 1:
      raise app.UsageError(f"--{name} must be >= 1. Received: {values[name]}")


def prepare_model_dir(values):
  """Creates the run directory, or checks that a resumed run matches it."""
  model_dir = values["model_dir"]
  flags_path = os.path.join(model_dir, "flags.json")
  if os.path.exists(os.path.join(model_dir, "results.json")):
    raise app.UsageError(
        f"--model_dir={model_dir!r} holds a finished run (results.json); "
        "choose a new --model_dir so its results are kept.")
  if os.path.exists(flags_path):
    with open(flags_path) as f:
      previous = json.load(f)
    # A flag added since the run was started counts as its default there.
    changed = {k: (previous.get(k, FLAGS[k].default), v)
               for k, v in values.items()
               if k not in _RESUME_INDEPENDENT and
               previous.get(k, FLAGS[k].default) != v}
    if changed:
      raise app.UsageError(
          f"--model_dir={model_dir!r} holds a run with different flags "
          f"(previous, now): {changed}. Use a new --model_dir (or delete "
          "this one if it holds nothing you want: a run that failed before "
          "training leaves only flags.json).")
    logging.info("Resuming the run in %s", model_dir)
  else:
    os.makedirs(model_dir, exist_ok=True)
    write_json(flags_path, values)


def main(argv):
  del argv
  values = resolved_flags()
  # First: a MultiWorkerMirroredStrategy must exist before any TF op runs
  # (check_flags reads a record). Creating it does not wait for the others.
  strategy = distribution.get_strategy(values["distribution_strategy"])
  check_flags(values)
  files = distribution.WorkerFiles(strategy, values["model_dir"])
  if files.chief:
    prepare_model_dir(values)
  keras.utils.set_random_seed(values["seed"])
  if values["mixed_precision"]:
    policy = ("mixed_float16" if tf.config.list_physical_devices("GPU")
              else "mixed_bfloat16")
    keras.mixed_precision.set_global_policy(policy)

  dataset = values["dataset"]
  train_examples = sdn_data.count_examples(dataset, "train",
                                           values["train_size"],
                                           values["data_dir"])
  # --batch_size is the global batch: fit splits it over the replicas, and
  # every worker reads its share of the batches (DATA sharding works for
  # one TFRecord file as for many).
  steps_per_epoch = math.ceil(train_examples / values["batch_size"])
  train = distribution.shard_by_data(sdn_data.make_dataset(
      dataset, "train", values["batch_size"], training=True,
      size=values["train_size"], data_dir=values["data_dir"],
      seed=values["seed"]))
  test = distribution.shard_by_data(sdn_data.make_dataset(
      dataset, "test", 256, size=values["eval_size"],
      data_dir=values["data_dir"]))

  with strategy.scope():
    model = tfsdn.densenet.DenseNet(
        depth=values["depth"], growth_rate=values["growth_rate"],
        bottleneck=values["bottleneck"], compression=values["compression"],
        num_classes=sdn_data.num_classes(dataset),
        dropout_rate=values["dropout_rate"],
        weight_decay=values["weight_decay"], criterion=values["criterion"],
        score_momentum=values["score_momentum"],
        group_lasso=values["group_lasso"])
  before = tfsdn.model_report(model)
  # Every worker names the same backup folder: tf_keras keeps the chief's
  # there and the others' in temporary folders of their own.
  backup_dir = os.path.join(values["model_dir"], "backup")
  callbacks = [
      # The backup outlives fit(): if evaluation, strip or export fails
      # later, a rerun restores the trained model instead of training again.
      keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False),
      keras.callbacks.LearningRateScheduler(
          recipe.step_decay(values["learning_rate"], values["epochs"])),
  ]
  # Only the chief writes logs: tfmot's PruningSummaries never closes its
  # writer, which at exit would write a non-chief's deleted folder again.
  log_dir = files.path("logs") if files.chief else None
  with strategy.scope():
    if values["mac_budget"] is not None:
      schedule = recipe.global_schedule(
          values["mac_budget"], values["num_stages"], values["epochs"],
          steps_per_epoch, values["prune_begin_epoch"],
          values["prune_end_epoch"], values["allocation_floor"])
    elif values["final_sparsity"] > 0:
      schedule = recipe.staged_schedule(
          values["final_sparsity"], values["num_stages"], values["epochs"],
          steps_per_epoch, values["prune_begin_epoch"],
          values["prune_end_epoch"])
    else:
      schedule = None
    if schedule is not None:
      logging.info("Pruning schedule: %s (%d steps per epoch)", schedule,
                   steps_per_epoch)
      model = tfsdn.prune_dense_connections(model, schedule)
      callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
      if log_dir:
        callbacks.append(
            tfmot.sparsity.keras.PruningSummaries(log_dir=log_dir))
      callbacks.append(tfsdn.UpdateScores(log_dir=log_dir,
                                          nested=values["nested"]))
    elif log_dir:
      callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir))
    recipe.compile_for_training(model, values["learning_rate"],
                                values["jit_compile"])
  model.fit(train, epochs=values["epochs"], validation_data=test,
            callbacks=callbacks, verbose=1 if logging.level_info() else 2)

  model, accuracy = recipe.strip_and_evaluate(model, test, strategy)
  layers = tfsdn.prunable_layers(model)
  logging.info("Live input channels digest: %s",
               _live_digest(layers))  # Equal on every worker and replica.
  _save_model(model, files.path("final_model.keras"))
  # The only strip: report and plot read it. For TensorFlow at batch 1
  # (strip's default), or with exact reads under a MAC budget, so that the
  # compact model's MACs are the budget's.
  exact = (dict(slice_cost_macs=0, pool_first=False)
           if values["mac_budget"] is not None else {})
  stripped = tfsdn.strip(model, **exact)
  compact = stripped.model
  _save_model(compact, files.path("compact_model.keras"))
  after = tfsdn.model_report(stripped)
  with atomic_path(files.path("report.md")) as tmp:
    with open(tmp, "w") as f:
      f.write("## Before vs after\n\n" +
              tfsdn.comparison_markdown(before, after) + "\n\n" +
              before.to_markdown() + "\n\n" + after.to_markdown() + "\n")
  tfsdn.plot_connectivity(after, files.path("connectivity.png"))
  export_base = (values["export_dir"] if files.chief and values["export_dir"]
                 else files.path("export"))
  export_path = tfsdn.export_saved_model(compact, export_base,
                                         xla=values["xla_export"])
  if not files.chief:
    files.cleanup()
    logging.info("Not the chief: wrote nothing into %s.", values["model_dir"])
    return
  export_accuracy = recipe.saved_model_accuracy(export_path, test)
  results = {
      "test_accuracy": accuracy,
      "export_test_accuracy": export_accuracy,
      "test_examples": sdn_data.count_examples(dataset, "test",
                                               values["eval_size"],
                                               values["data_dir"]),
      "params_before": before.total_params,
      "params_after": after.total_params,
      "macs_before": before.total_macs,
      "macs_after": after.total_macs,
      "mac_budget": values["mac_budget"],
      "mean_sparsity": float(np.mean([l.sparsity() for l in layers])),
      "export_path": export_path,
      "replicas": strategy.num_replicas_in_sync,
  }
  write_json(files.path("results.json"), results)
  shutil.rmtree(backup_dir, ignore_errors=True)  # The run is finished.
  print(summary(values["model_dir"], results))


def summary(model_dir, results):
  """What the run measured and where its files are, for the terminal."""
  return "\n".join([
      f"Test accuracy {results['test_accuracy']:.2%} on "
      f"{results['test_examples']:,} images (exported SavedModel: "
      f"{results['export_test_accuracy']:.2%}); parameters "
      f"{results['params_before']:,} -> {results['params_after']:,}; MACs "
      f"per image {results['macs_before']:,} -> {results['macs_after']:,} "
      f"({results['macs_after'] / results['macs_before']:.3f}x"
      + (f"; --mac_budget={results['mac_budget']} bounds the estimate from "
         "the pruned inputs, and strip removed the filters no one reads on "
         "top" if results.get("mac_budget") else "") + ").",
      f"Written into {model_dir}: flags.json (the flags),",
      "  report.md         parameters and MACs per layer, before and after",
      "  connectivity.png  which feature maps each layer still reads",
      "  results.json      these figures",
      "  final_model.keras (pruned), compact_model.keras (stripped)",
      f"  logs/             TensorBoard: tensorboard --logdir "
      f"{os.path.join(model_dir, 'logs')}",
      f"SavedModel: {results['export_path']}",
      f"  python examples/predict.py --saved_model={results['export_path']}"
      " IMAGE...",
  ])


def _live_digest(layers):
  """A short hash of every layer's live input channels."""
  digest = hashlib.sha256()
  for layer in layers:
    digest.update(layer.name.encode())
    digest.update(np.packbits(layer.live_mask()).tobytes())
  return digest.hexdigest()[:16]


if __name__ == "__main__":
  cli.run(main)
