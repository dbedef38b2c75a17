r"""The tfmot path and the Keras 3 path side by side: speed and accuracy.

Trains the same DenseNet on the same images with the same staged pruning
three ways, each in its own process, one after the other on one machine:
the tfmot path (tf_keras + tfmot), and the Keras 3 path on the TensorFlow
and on the JAX backend. Every child reads the CIFAR TFRecords with the
TensorFlow-free reader (`tfsdn.keras3.data`), so all see identical pixels,
and trains on them as numpy arrays without augmentation, in one fixed
order (the same batches in both Kerases), from the same initial weights
(the first child writes them, the others load them by layer name). It
reports training images per second (median
epoch after the first, which compiles), the compact model's test accuracy
and MACs, and writes JSON.

  python benchmarks/keras3_side_by_side.py \
      --dataset=tfrecord:../shared/data/cifar10 \
      --output=docs/keras3_side_by_side.json
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "tfrecord:DIR")
flags.DEFINE_string("output", "docs/keras3_side_by_side.json", "JSON out.")
flags.DEFINE_integer("depth", 16, "DenseNet depth.")
flags.DEFINE_integer("growth_rate", 12, "Growth rate.")
flags.DEFINE_integer("train_size", 3072, "Training images.")
flags.DEFINE_integer("test_size", 2000, "Test images.")
flags.DEFINE_integer("epochs", 4, "Epochs.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("sparsity", 0.5, "Layer-wise final sparsity.")
flags.DEFINE_list("paths", ["tfmot", "keras3:tensorflow", "keras3:jax"],
                  "What to run.")
flags.DEFINE_string("child", None, "Internal: run one path and print JSON.")
flags.DEFINE_integer("seed", 0, "Seed.")

RUNS = ("tfmot", "keras3:tensorflow", "keras3:jax")


def _data():
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tfsdn.keras3 import data  # pylint: disable=g-import-not-at-top
  directory = FLAGS.dataset[len("tfrecord:"):]
  train = data.read_tfrecord(os.path.join(directory, "train.tfrecord"),
                             limit=FLAGS.train_size)
  # One fixed shuffle for every child; fit then keeps this order.
  order = np.random.default_rng(FLAGS.seed).permutation(len(train[0]))
  train = (train[0][order], train[1][order])
  test = data.read_tfrecord(os.path.join(directory, "test.tfrecord"),
                            limit=FLAGS.test_size)
  return ((train[0].astype("float32"), train[1]),
          (test[0].astype("float32"), test[1]))


def _same_start(model):
  """Loads the shared initial weights, or writes them if first."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tfsdn.keras3.migrate import layer_variables  # pylint: disable=g-import-not-at-top
  path = FLAGS.output + ".init.npz"
  if os.path.exists(path):
    saved = np.load(path)
    for layer in model.layers:
      for i, variable in enumerate(layer_variables(layer)):
        variable.assign(saved[f"{layer.name}|{i}"])
  else:
    np.savez(path, **{f"{layer.name}|{i}": np.asarray(variable.numpy())
                      for layer in model.layers
                      for i, variable in enumerate(layer_variables(layer))})


def _stages(steps_per_epoch):
  from tfsdn.common import stages  # pylint: disable=g-import-not-at-top
  # Two stages, at epochs 1 and 2; the learning rate drops at epoch 3.
  return stages.evenly_stages(FLAGS.sparsity, 2, 1, 2,
                              steps_per_epoch=steps_per_epoch)


def _lr(epoch, unused_lr=None):
  return 0.1 if epoch < FLAGS.epochs - 1 else 0.01


def _epoch_timer(keras, times):
  class Timer(keras.callbacks.Callback):

    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      times.append(time.perf_counter() - self.start)

  return Timer()


def _child_tfmot(train, test):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top
  import tfsdn  # pylint: disable=g-import-not-at-top
  from tfsdn import recipe  # pylint: disable=g-import-not-at-top
  from tfsdn.compat import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(FLAGS.seed)
  model = tfsdn.densenet.DenseNet(depth=FLAGS.depth,
                                  growth_rate=FLAGS.growth_rate)
  _same_start(model)
  steps = len(train[0]) // FLAGS.batch_size
  pruned = tfsdn.prune_dense_connections(
      model, tfsdn.StagedSparsity(_stages(steps)))
  recipe.compile_for_training(pruned, 0.1)
  times = []
  history = pruned.fit(train[0][:steps * FLAGS.batch_size],
             train[1][:steps * FLAGS.batch_size], batch_size=FLAGS.batch_size,
             epochs=FLAGS.epochs, verbose=2, shuffle=False, callbacks=[
                 tfmot.sparsity.keras.UpdatePruningStep(),
                 tfsdn.UpdateScores(),
                 keras.callbacks.LearningRateScheduler(_lr),
                 _epoch_timer(keras, times)])
  compact = tfsdn.strip_to_compact(tfmot.sparsity.keras.strip_pruning(pruned),
                                   slice_cost_macs=0, pool_first=False)
  predicted = np.argmax(compact.predict(test[0], verbose=0), -1)
  return times, history.history["loss"], float(np.mean(
      predicted == test[1])), (
      tfsdn.model_report(compact).total_macs /
      tfsdn.model_report(model).total_macs)


def _child_keras3(train, test):
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tfsdn.keras3 as sdn  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(FLAGS.seed)
  model = sdn.densenet.DenseNet(depth=FLAGS.depth,
                                growth_rate=FLAGS.growth_rate)
  _same_start(model)
  steps = len(train[0]) // FLAGS.batch_size
  model.compile(
      optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  times = []
  history = model.fit(train[0][:steps * FLAGS.batch_size],
            train[1][:steps * FLAGS.batch_size], batch_size=FLAGS.batch_size,
            epochs=FLAGS.epochs, verbose=2, shuffle=False, callbacks=[
                sdn.Pruning(_stages(steps)),
                keras.callbacks.LearningRateScheduler(_lr),
                _epoch_timer(keras, times)])
  compact = sdn.strip(model, slice_cost_macs=0).model
  predicted = np.argmax(np.asarray(compact.predict(test[0], verbose=0)), -1)
  return times, history.history["loss"], float(np.mean(
      predicted == test[1])), (
      sdn.dense_macs(compact) / sdn.dense_macs(model))


def _run_child(path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  if path.startswith("keras3:"):
    env["KERAS_BACKEND"] = path.split(":")[1]
  # --output too: the children share their start next to it (`_same_start`).
  args = [sys.executable, __file__, f"--child={path}"] + [
      f"--{name}={FLAGS[name].value}" for name in (
          "dataset", "output", "depth", "growth_rate", "train_size",
          "test_size", "epochs", "batch_size", "sparsity", "seed")]
  result = subprocess.run(args, capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"{path} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if not (FLAGS.dataset or "").startswith("tfrecord:"):
    raise app.UsageError("--dataset must be tfrecord:DIR")
  if FLAGS.child:
    train, test = _data()
    run = _child_tfmot if FLAGS.child == "tfmot" else _child_keras3
    times, losses, accuracy, mac_ratio = run(train, test)
    steady = sorted(times[1:])[len(times[1:]) // 2]
    images = (len(train[0]) // FLAGS.batch_size) * FLAGS.batch_size
    print(json.dumps({"path": FLAGS.child, "epoch_seconds": times,
                      "epoch_loss": losses,
                      "train_images_per_second": images / steady,
                      "test_accuracy": accuracy, "mac_ratio": mac_ratio}))
    return
  unknown = [p for p in FLAGS.paths if p not in RUNS]
  if unknown:
    raise app.UsageError(f"--paths: unknown {unknown}; choose from {RUNS}")
  if os.path.exists(FLAGS.output + ".init.npz"):
    os.remove(FLAGS.output + ".init.npz")
  try:
    rows = [_run_child(path) for path in FLAGS.paths]
  finally:
    if os.path.exists(FLAGS.output + ".init.npz"):
      os.remove(FLAGS.output + ".init.npz")
  base = next((r for r in rows if r["path"] == "tfmot"), rows[0])
  for row in rows:
    row["speed_vs_tfmot"] = (row["train_images_per_second"] /
                             base["train_images_per_second"])
  report = {"flags": {name: FLAGS[name].value for name in (
      "dataset", "depth", "growth_rate", "train_size", "test_size", "epochs",
      "batch_size", "sparsity", "seed")}, "runs": rows,
            "cpu_count": os.cpu_count()}
  from tfsdn.files import write_json  # pylint: disable=g-import-not-at-top
  write_json(FLAGS.output, report)
  print("| path | train images/s | vs tfmot | test accuracy | compact MACs |")
  print("| --- | ---: | ---: | ---: | ---: |")
  for row in rows:
    print(f"| {row['path']} | {row['train_images_per_second']:.0f} | "
          f"{row['speed_vs_tfmot']:.2f}x | {row['test_accuracy']:.2%} | "
          f"{row['mac_ratio']:.3f}x |")


if __name__ == "__main__":
  app.run(main)
