r"""Quantization-aware fine-tuning against post-training int8, on trained nets.

For each trained model (.keras of stock layers, e.g. the evidence run's
compact and dense models), on the same --eval_images real test images:

- `float`: the Keras model;
- `ptq_int8`: full-integer post-training int8 LiteRT (calibrated on
  --calibration_images training images);
- `qat_int8`: `tfsdn.quantize.quantize_aware(model)` fine-tuned for --steps
  SGD steps, converted to int8 LiteRT (and `qat_keras`, its fake-quantized
  Keras accuracy);
- the control, `finetuned_float` and `finetuned_ptq_int8`: the same
  --steps of the same data on `tfsdn.quantize.fold_batch_norms(model)`
  (BatchNormalization frozen as in QAT, no fake quantization), then
  post-training int8. QAT minus this control is what quantization
  awareness adds beyond more training.

Differences are paired per image: McNemar's test and a bootstrap interval
over the test images (one fine-tuning run each, so the variation between
runs is not in the interval).

Also reports each int8 file's size, its op counts (QUANTIZE ops between two
int8 tensors are requantizations, mostly of concatenation inputs) and its
batch-1 LiteRT throughput, PTQ and QAT side by side in one run.

  python benchmarks/qat_int8.py --dataset=tfrecord:../shared/data/cifar10 \
      --output=docs/qat_int8.json
"""

import atexit
import collections
import os
import shutil
import tempfile

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import tfsdn
from tfsdn import quantize
from tfsdn.compat import keras
from tfsdn.files import write_json
import paired
from runtime_timing import litert_serve
from runtime_timing import time_rounds

_EVIDENCE = os.path.join(os.path.dirname(__file__), os.pardir, "docs",
                         "evidence", "cifar10_d16", "seed0")

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "models", [os.path.join(_EVIDENCE, "el1_layer@0.45.keras"),
               os.path.join(_EVIDENCE, "dense.keras")],
    "Trained models (.keras, stock tf_keras layers, logits or softmax out).")
flags.DEFINE_string("dataset", None, "cifar10, cifar100 or tfrecord:DIR.",
                    required=True)
flags.DEFINE_integer("steps", 200, "Fine-tuning steps (QAT and control).")
flags.DEFINE_integer("batch_size", 64, "Fine-tuning batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Fine-tuning SGD learning rate.")
flags.DEFINE_integer("train_offset", 5000, "Training images skipped first "
                     "(the evidence run's validation split).")
flags.DEFINE_integer("train_size", 10000, "Training images fine-tuned on.")
flags.DEFINE_integer("calibration_images", 256, "int8 calibration images.")
flags.DEFINE_integer("eval_images", 5000, "Test images for accuracy.")
flags.DEFINE_integer("rounds", 3, "Timing rounds (0: no timing).")
flags.DEFINE_float("seconds", 1.0, "Seconds per model per timing round.")
flags.DEFINE_integer("threads", 2, "LiteRT threads.")
flags.DEFINE_integer("seed", 0, "Seed of the fine-tuning data order.")
flags.DEFINE_string("output", "docs/qat_int8.json", "JSON results.")


def _litert(path):
  """`serve(images) -> logits`, and the op counts of the graph."""
  serve, interpreter_for = litert_serve(path, FLAGS.threads)
  interpreter = interpreter_for(1)
  tensors = interpreter.get_tensor_details()
  ops = collections.Counter()
  for op in interpreter._get_ops_details():  # pylint: disable=protected-access
    name = op["op_name"]
    if name == "QUANTIZE":
      dtypes = {tensors[i]["dtype"] for i in [*op["inputs"], *op["outputs"]]}
      name = ("QUANTIZE (int8 -> int8)" if dtypes == {np.int8} else
              "QUANTIZE (float -> int8)")
    ops[name] += 1
  return serve, dict(ops)


def _correct(serve, test):
  """Booleans, one per test image: the prediction is right."""
  return np.concatenate([
      np.argmax(serve(images.numpy()), -1) == labels.numpy()
      for images, labels in test])


# (A, B): A - B per image, paired (McNemar and a bootstrap over images).
COMPARISONS = (("ptq_int8", "float"), ("qat_int8", "ptq_int8"),
               ("qat_int8", "finetuned_ptq_int8"),
               ("finetuned_ptq_int8", "ptq_int8"))


def _keras_serve(model):
  return lambda images: model(images, training=False).numpy()


def _fine_tune(model, from_logits):
  keras.utils.set_random_seed(FLAGS.seed)
  model.compile(
      keras.optimizers.SGD(FLAGS.learning_rate, momentum=0.9),
      keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
  train = tfsdn.data.make_dataset(
      FLAGS.dataset, "train", FLAGS.batch_size, training=True,
      size=FLAGS.train_size, offset=FLAGS.train_offset, seed=FLAGS.seed)
  history = model.fit(train.repeat().take(FLAGS.steps), epochs=1, verbose=0)
  return float(history.history["loss"][-1])


def _int8(model, path, calibration):
  tfsdn.export_tflite(model, path, quantization="int8",
                      representative_images=calibration)
  return _litert(path)


def evaluate(path, test, calibration, workdir):
  """Every variant of one model: accuracies, sizes, ops, servers."""
  name = os.path.splitext(os.path.basename(path))[0]
  model = keras.models.load_model(path, compile=False)
  activation = getattr(model.layers[-1], "activation", None)
  from_logits = getattr(activation, "__name__", "") != "softmax"
  result = {"path": os.path.relpath(path), "accuracy": {}, "file_bytes": {},
            "ops": {}, "fine_tune_loss": {}, "paired": {}}
  served, correct = {}, {}

  def measure(variant, serve):
    correct[variant] = _correct(serve, test)
    result["accuracy"][variant] = float(correct[variant].mean())

  measure("float", _keras_serve(model))

  def add_int8(variant, keras_model):
    file = os.path.join(workdir, f"{name}_{variant}.tflite")
    serve, ops = _int8(keras_model, file, calibration)
    measure(variant, serve)
    result["file_bytes"][variant] = os.path.getsize(file)
    result["ops"][variant] = ops
    served[f"{name}/{variant}"] = serve

  add_int8("ptq_int8", model)
  control = quantize.fold_batch_norms(model)
  result["fine_tune_loss"]["control"] = _fine_tune(control, from_logits)
  measure("finetuned_float", _keras_serve(control))
  add_int8("finetuned_ptq_int8", control)
  qat = quantize.quantize_aware(model)
  result["fine_tune_loss"]["qat"] = _fine_tune(qat, from_logits)
  measure("qat_keras", _keras_serve(qat))
  add_int8("qat_int8", qat)
  for a, b in COMPARISONS:
    only_a, only_b, p_value = paired.mcnemar(correct[a], correct[b])
    mean, low, high = paired.bootstrap_difference(correct[a][None],
                                                  correct[b][None])
    result["paired"][f"{a} - {b}"] = {
        "points": 100 * mean, "interval_95": [100 * low, 100 * high],
        "only_a_right": only_a, "only_b_right": only_b, "p_mcnemar": p_value}
  logging.info("%s: %s", name, result["accuracy"])
  return name, result, served


def main(argv):
  del argv
  test = tfsdn.data.make_dataset(FLAGS.dataset, "test", 64,
                                 size=FLAGS.eval_images)
  calibration = tfsdn.data.representative_images(FLAGS.dataset,
                                                 FLAGS.calibration_images)
  workdir = tempfile.mkdtemp(prefix="tfsdn-qat-")
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)  # Exports.
  results, served = {}, {}
  for path in FLAGS.models:
    name, results[name], servers = evaluate(path, test, calibration, workdir)
    served.update(servers)
  if FLAGS.rounds:
    speed = time_rounds(
        {key: (lambda serve: lambda images: {"logits": tf.constant(
            serve(images.numpy()))})(serve) for key, serve in served.items()},
        [1], FLAGS.rounds, FLAGS.seconds)
    for (key, _), value in speed.items():
      name, variant = key.split("/")
      results[name].setdefault("images_per_second_batch1", {})[variant] = (
          value)
  lines = ["| model | float | PTQ int8 | fine-tuned float | its PTQ int8 | "
           "QAT (Keras) | QAT int8 | int8 file PTQ / QAT | requantize ops "
           "PTQ / QAT | batch-1 img/s PTQ / QAT |", "|" + " --- |" * 10]
  for name, r in results.items():
    a, ops = r["accuracy"], r["ops"]
    speed = r.get("images_per_second_batch1", {})
    lines.append(
        f"| {name} | " + " | ".join(f"{100 * a[k]:.2f}%" for k in (
            "float", "ptq_int8", "finetuned_float", "finetuned_ptq_int8",
            "qat_keras", "qat_int8")) +
        f" | {r['file_bytes']['ptq_int8'] / 1e6:.3f} / "
        f"{r['file_bytes']['qat_int8'] / 1e6:.3f} MB | " +
        " / ".join(str(ops[k].get("QUANTIZE (int8 -> int8)", 0))
                   for k in ("ptq_int8", "qat_int8")) + " | " +
        " / ".join(f"{speed.get(k, float('nan')):.0f}"
                   for k in ("ptq_int8", "qat_int8")) + " |")
  for name, r in results.items():
    for key, d in r["paired"].items():
      lines.append(f"- {name}: {key} = {d['points']:+.2f} points "
                   f"[{d['interval_95'][0]:+.2f}, {d['interval_95'][1]:+.2f}]"
                   f" (McNemar {d['only_a_right']}:{d['only_b_right']}, "
                   f"p={d['p_mcnemar']:.3g})")
  print("\n".join(lines))
  write_json(FLAGS.output, {
      "models": results, "steps": FLAGS.steps,
      "batch_size": FLAGS.batch_size, "learning_rate": FLAGS.learning_rate,
      "train_offset": FLAGS.train_offset, "train_size": FLAGS.train_size,
      "calibration_images": FLAGS.calibration_images,
      "eval_images": FLAGS.eval_images, "seed": FLAGS.seed,
      "rounds": FLAGS.rounds, "threads": FLAGS.threads,
      "tensorflow": tf.__version__, "table": lines})
  logging.info("Wrote %s", FLAGS.output)


if __name__ == "__main__":
  app.run(main)
