r"""The accuracy table: staged self-learning pruning against its alternatives.

Trains the same DenseNet on CIFAR once per *arm*, with the same
initialisation, data order, augmentation, optimizer and epoch budget, then
evaluates each on a validation set held out from the train split and on the
test split, exports it as a SavedModel (plain and XLA) and times every arm's
SavedModel side by side at the end of the run.

Arms:
  dense               no pruning (the baseline)
  expected_l1         tfsdn staged pruning, default criterion
  weight_l1           the same stages, CondenseNet's criterion
  bn_gamma            the same stages, Network Slimming's criterion
  random              the same stages, channels dropped at random (control)
  tfmot_unstructured  tfmot's prune_low_magnitude on the kernels of the same
                      convolutions (elementwise, PolynomialDecay) to the same
                      sparsity, i.e. the same number of remaining kernel
                      weights in those layers

The default scale (DenseNet-16, k=12, 5,000 training images, 8 epochs) takes
about 75 minutes on 2 CPU cores:

  python benchmarks/cifar_table.py --dataset=tfrecord:../shared/data/cifar10

The paper-scale setting, on a GPU:

  python benchmarks/cifar_table.py --dataset=cifar10 --depth=40 \
      --epochs=300 --train_size=45000 --validation_size=5000 --num_stages=3

Each arm writes OUTPUT_DIR/ARM.json as soon as it finishes; a restarted run
skips the arms already done (if its training flags are unchanged). The
timing pass, OUTPUT_DIR/table.md and OUTPUT_DIR/accuracy_vs_macs.png cover
every finished arm in OUTPUT_DIR.
"""

import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import tfsdn
from tfsdn import recipe
from tfsdn import schedule as schedule_lib
from tfsdn.compat import keras
from tfsdn.files import atomic_path
from tfsdn.files import write_json
import experiment
from serving_timing import time_rounds

ARMS = ("dense", "expected_l1", "weight_l1", "bn_gamma", "random",
        "tfmot_unstructured")
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiment)  # --help lists the training flags.
flags.DEFINE_list("arms", list(ARMS), "Arms to train (any of " +
                  ", ".join(ARMS) + ").")
flags.DEFINE_integer("speed_batch_size", 64, "Batch size of the timing pass.")
flags.DEFINE_integer("speed_rounds", 3, "Interleaved timing rounds.")
flags.DEFINE_float("speed_seconds", 2.0, "Seconds per model per round.")

def _read_json(path):
  with open(path) as f:
    return json.load(f)


def check_flags(config):
  """Fails before any training on a flag value that cannot work."""
  unknown = [arm for arm in FLAGS.arms if arm not in ARMS]
  if unknown or not FLAGS.arms:
    raise app.UsageError(
        f"--arms must name some of {', '.join(ARMS)}. Received: "
        f"{','.join(FLAGS.arms)!r}")
  experiment.check_training_flags(config)


def prepare_output_dir(config):
  """Creates OUTPUT_DIR, or checks that its finished arms used `config`."""
  output_dir = FLAGS.output_dir
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, "config.json")
  if os.path.exists(path):
    previous = _read_json(path)
    # A flag added after the run was made counts as its default there.
    changed = {k: (previous.get(k, FLAGS[k].default), v)
               for k, v in config.items()
               if previous.get(k, FLAGS[k].default) != v}
    if changed:
      raise app.UsageError(
          f"--output_dir={output_dir!r} holds arms trained with other flags "
          f"(previous, now): {changed}. Use a new --output_dir.")
  else:
    write_json(path, config)


def unstructured_pruning(model, config, steps_per_epoch):
  """tfmot's elementwise pruning of the convolutions tfsdn would prune.

  The model is first rebuilt from stock layers (`strip_to_compact` of an
  unpruned model keeps every channel), then every Conv2D that replaced a
  `PrunableConcatConv` is wrapped by `prune_low_magnitude` with a
  `PolynomialDecay` from 0 to `final_sparsity` over the same epochs as the
  staged arms, so each such kernel ends with as many weights as the staged
  arms leave in it.
  """
  names = {layer.name for layer in tfsdn.prunable_layers(model)}
  plain = tfsdn.strip_to_compact(model)
  begin_epoch, end_epoch = recipe.default_pruning_epochs(
      config["epochs"], config["prune_begin_epoch"], config["prune_end_epoch"])
  begin = schedule_lib.epoch_step(begin_epoch, steps_per_epoch)
  frequency = max(1, steps_per_epoch // 4)
  # tfmot prunes only on begin + k * frequency: make the last of those the
  # end step, so the final sparsity is reached exactly.
  end = begin + frequency * max(1, math.ceil(
      (schedule_lib.epoch_step(end_epoch, steps_per_epoch) - begin) / frequency))
  schedule = tfmot.sparsity.keras.PolynomialDecay(
      0.0, config["final_sparsity"], begin, end, frequency=frequency)

  def wrap(layer):
    if layer.name in names:
      return tfmot.sparsity.keras.prune_low_magnitude(
          layer, pruning_schedule=schedule)
    return layer

  return keras.models.clone_model(plain, clone_function=wrap)


def conv_weight_counts(model):
  """`(nonzero kernel weights of all Conv2D, zero weights, zero MACs)`."""
  nonzero = zeros = zero_macs = 0
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      kernel = layer.kernel.numpy()
      layer_zeros = int(np.sum(kernel == 0))
      nonzero += kernel.size - layer_zeros
      zeros += layer_zeros
      height, width = layer.output_shape[1:3]
      zero_macs += layer_zeros * height * width
  return nonzero, zeros, zero_macs


def train_arm(arm, config, data):
  """Trains, evaluates and exports one arm; returns its result dict."""
  criterion = arm if arm in experiment.TFSDN_ARMS else "expected_l1"
  model = experiment.build_densenet(config, criterion)
  callbacks = [keras.callbacks.LearningRateScheduler(
      recipe.step_decay(config["learning_rate"], config["epochs"]))]
  result = {"arm": arm}
  if arm in experiment.TFSDN_ARMS:
    schedule = recipe.staged_schedule(
        config["final_sparsity"], config["num_stages"], config["epochs"],
        data.steps_per_epoch, config["prune_begin_epoch"],
        config["prune_end_epoch"])
    result["schedule"] = schedule.get_config()["config"]
    model = tfsdn.prune_dense_connections(model, schedule)
    callbacks += [tfmot.sparsity.keras.UpdatePruningStep(),
                  tfsdn.UpdateScores()]
  elif arm == "tfmot_unstructured":
    model = unstructured_pruning(model, config, data.steps_per_epoch)
    callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
  recipe.compile_for_training(model, config["learning_rate"],
                              config["jit_compile"])
  start = time.time()
  history = model.fit(data.train, epochs=config["epochs"],
                      callbacks=callbacks, verbose=2)
  result["train_seconds"] = time.time() - start
  result["train_loss"] = [float(v) for v in history.history["loss"]]
  result["train_accuracy"] = [float(v) for v in history.history["accuracy"]]

  model = tfmot.sparsity.keras.strip_pruning(model)
  if arm == "tfmot_unstructured":
    final = model
    report = tfsdn.model_report(final)
  else:
    if arm in experiment.TFSDN_ARMS:
      result["mean_sparsity"] = float(np.mean(
          [layer.sparsity() for layer in tfsdn.prunable_layers(model)]))
    stripped = tfsdn.strip(model)
    final = stripped.model
    report = tfsdn.model_report(stripped)
  nonzero, zeros, zero_macs = conv_weight_counts(final)
  result.update(
      params=report.total_params - zeros,
      macs=report.total_macs - zero_macs,
      params_stored=report.total_params,
      macs_computed=report.total_macs,
      conv_weights_nonzero=nonzero,
      validation_accuracy=experiment.accuracy(final, data.validation),
      validation_examples=data.validation_examples,
      test_accuracy=experiment.accuracy(final, data.test),
      test_examples=data.test_examples,
      train_examples=data.train_examples)
  export_base = os.path.join(FLAGS.output_dir, arm, "export")
  result["exports"] = {
      mode: tfsdn.export_saved_model(final, os.path.join(export_base, mode),
                                     version=1, xla=mode == "xla",
                                     overwrite=True)
      for mode in ("plain", "xla")}
  result["export_test_accuracy"] = recipe.saved_model_accuracy(
      result["exports"]["plain"], data.test)
  return result


def time_arms(results):
  """Times every arm's SavedModels side by side; fills in `throughput`."""
  functions = {}
  for arm, result in results.items():
    for mode, path in result["exports"].items():
      functions[f"{arm}/{mode}"] = tf.saved_model.load(path).signatures[
          "serving_default"]
  batch = FLAGS.speed_batch_size
  image_shape = tuple(
      next(iter(functions.values())).structured_input_signature[1][
          "images"].shape[1:])
  speed = time_rounds(functions, [batch], FLAGS.speed_rounds,
                      FLAGS.speed_seconds, image_shape)
  for arm, result in results.items():
    per_mode = {mode: speed[(f"{arm}/{mode}", batch)]
                for mode in result["exports"]}
    best_mode = max(per_mode, key=per_mode.get)
    result["throughput"] = {"batch_size": batch,
                            "images_per_second": per_mode,
                            "best_mode": best_mode,
                            "best": per_mode[best_mode]}
  if "dense" in results:
    dense = results["dense"]["throughput"]["best"]
    for result in results.values():
      result["throughput"]["vs_dense"] = result["throughput"]["best"] / dense


def table_markdown(results, config):
  """The table, with the noise that one test sample carries."""
  dense = results.get("dense")
  lines = [
      "| arm | validation acc. | test acc. | vs dense (points) | "
      "parameters | MACs | MACs vs dense | nonzero conv weights | "
      f"img/s @ batch {FLAGS.speed_batch_size} (mode) | speed vs dense |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for arm in ARMS:
    if arm not in results:
      continue
    r = results[arm]
    validation = ("n/a" if r["validation_accuracy"] is None
                  else f"{100 * r['validation_accuracy']:.2f}%")
    delta = (f"{100 * (r['test_accuracy'] - dense['test_accuracy']):+.2f}"
             if dense else "n/a")
    macs_ratio = f"{r['macs'] / dense['macs']:.2f}x" if dense else "n/a"
    speed = r["throughput"]
    vs_dense = f"{speed['vs_dense']:.2f}x" if "vs_dense" in speed else "n/a"
    macs = f"{r['macs'] / 1e6:.1f}M"
    if r["macs"] != r["macs_computed"]:
      macs += f" nonzero ({r['macs_computed'] / 1e6:.1f}M computed)"
    lines.append(
        f"| {arm} | {validation} | {100 * r['test_accuracy']:.2f}% | {delta} "
        f"| {r['params']:,} | {macs} | {macs_ratio} | "
        f"{r['conv_weights_nonzero']:,} | {speed['best']:.1f} "
        f"({speed['best_mode']}) | {vs_dense} |")
  n = next(iter(results.values()))["test_examples"]
  p = dense["test_accuracy"] if dense else 0.5
  standard_error = 100 * math.sqrt(p * (1 - p) / n)
  lines += [
      "",
      f"DenseNet-{config['depth']} (k={config['growth_rate']}), "
      f"{next(iter(results.values()))['train_examples']:,} training images, "
      f"{config['epochs']} epochs, final per-layer input-channel sparsity "
      f"{config['final_sparsity']} in {config['num_stages']} stages, seed "
      f"{config['seed']}; {n:,} test images.",
      "",
      f"Noise: with {n:,} test images, one accuracy near {100 * p:.1f}% has a "
      f"binomial standard error of {standard_error:.2f} points, so a "
      f"difference between two arms below about "
      f"{2 * math.sqrt(2) * standard_error:.1f} points (two standard errors "
      "of a difference) is within the noise of the test sample alone; "
      "seed-to-seed variation of training, not measured by one run, adds to "
      "it. For tfmot_unstructured the MACs are those of its nonzero weights; "
      "its SavedModel still computes every zero.",
  ]
  return "\n".join(lines) + "\n"


def plot(results, path):
  """Test accuracy against MACs, one point per arm."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=(6.4, 4.4))
  for arm in ARMS:
    if arm not in results:
      continue
    r = results[arm]
    hollow = r["macs"] != r["macs_computed"]
    axes.scatter(r["macs"] / 1e6, 100 * r["test_accuracy"], s=50,
                 facecolors="none" if hollow else None,
                 edgecolors="C0" if hollow else None,
                 label=arm + (" (nonzero MACs)" if hollow else ""))
    axes.annotate(arm, (r["macs"] / 1e6, 100 * r["test_accuracy"]),
                  textcoords="offset points", xytext=(5, 4), fontsize=8)
  axes.set_xlabel("MACs per image (millions)")
  axes.set_ylabel("test accuracy (%)")
  axes.set_title("CIFAR: accuracy against compute, one run per arm")
  axes.grid(alpha=0.3)
  figure.tight_layout()
  with atomic_path(path, suffix=".png") as tmp:
    figure.savefig(tmp, dpi=120)
  plt.close(figure)


def main(argv):
  del argv
  config = experiment.training_config()
  check_flags(config)
  prepare_output_dir(config)
  data = experiment.Data(config)
  logging.info("%d training images (%d steps per epoch), %d held out, %d test",
               data.train_examples, data.steps_per_epoch,
               data.validation_examples, data.test_examples)
  for arm in FLAGS.arms:
    path = os.path.join(FLAGS.output_dir, f"{arm}.json")
    if os.path.exists(path):
      logging.info("Arm %s is done (%s): skipping it.", arm, path)
      continue
    logging.info("Training arm %s", arm)
    result = train_arm(arm, config, data)
    write_json(path, result)
    logging.info("Arm %s: test accuracy %.4f, %d parameters, %d MACs",
                 arm, result["test_accuracy"], result["params"],
                 result["macs"])

  results = {arm: _read_json(os.path.join(FLAGS.output_dir, f"{arm}.json"))
             for arm in ARMS
             if os.path.exists(os.path.join(FLAGS.output_dir, f"{arm}.json"))}
  time_arms(results)
  for arm, result in results.items():
    write_json(os.path.join(FLAGS.output_dir, f"{arm}.json"), result)
  table = table_markdown(results, config)
  with atomic_path(os.path.join(FLAGS.output_dir, "table.md"),
                   suffix=".md") as tmp:
    with open(tmp, "w") as f:
      f.write(table)
  plot(results, os.path.join(FLAGS.output_dir, "accuracy_vs_macs.png"))
  print(table)


if __name__ == "__main__":
  app.run(main)
