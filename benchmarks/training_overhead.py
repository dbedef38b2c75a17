r"""What pruning adds to a training step: the wrapped step against the stock one.

For each net, the stock model a user brings and the same model made
prunable and wrapped by tfmot (`make_prunable`, `prune_dense_connections`),
twice: with its one stage right after the timed steps, so every timed step
measures the `expected_l1` statistics (the steps in each stage's
statistics window, `tfsdn.common.stages.statistics_window`: 153 steps at the
default momentum), and with it far past them (the steps between those
windows, which do not). All three are trained side by side by `model.fit`
with the callbacks a user passes (`UpdatePruningStep`, `UpdateScores`):
interleaved rounds of --steps steps each, the first round a warm-up, the
median step time per model and its ratio to the stock one. The machine's
load average is recorded before and after.

Nets: `densenet121`/`densenet169`/`densenet201`
(`tf_keras.applications`, random weights, --image_size) and `densenetD`
for another depth D (`tfsdn.densenet.DenseNet(depth=D, growth_rate=12)`,
CIFAR's 32x32; its stock twin is the unpruned model stripped to stock
layers).

  python benchmarks/training_overhead.py --nets=densenet121,densenet40 \
      --output=docs/training_overhead.json
"""

import os
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow_model_optimization as tfmot

import tfsdn
from tfsdn.compat import keras
from tfsdn.files import write_json

FLAGS = flags.FLAGS
APPLICATIONS = {"densenet121": "DenseNet121", "densenet169": "DenseNet169",
                "densenet201": "DenseNet201"}


def _cifar_depth(net):
  """D of "densenetD" (not an applications net), or None."""
  digits = net[len("densenet"):]
  if net in APPLICATIONS or not net.startswith("densenet") or (
      not digits.isdigit()):
    return None
  return int(digits)


def check_net(net):
  if net not in APPLICATIONS and _cifar_depth(net) is None:
    raise ValueError(
        f"--nets: unknown net {net!r}; use one of {sorted(APPLICATIONS)} or "
        "densenetD for tfsdn's CIFAR DenseNet of depth D (densenet40)")


class _StepTimes(keras.callbacks.Callback):
  """Wall time of each training batch."""

  def __init__(self):
    super().__init__()
    self.times = []
    self._start = None

  def on_train_batch_begin(self, batch, logs=None):
    self._start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter() - self._start)


def models(net, image_size, measuring_stage=None):
  """`(stock, wrapped, input shape)` for one net.

  Args:
    net: See --nets.
    image_size: See --image_size.
    measuring_stage: The step of the wrapped model's one stage; None for
      one far past the timed steps (no statistics measured).
  """
  check_net(net)
  if net in APPLICATIONS:
    shape = (image_size, image_size, 3)
    stock = getattr(keras.applications, APPLICATIONS[net])(
        weights=None, input_shape=shape, classes=10,
        classifier_activation=None)
    prunable = tfsdn.make_prunable(stock)
  else:
    shape = (32, 32, 3)
    prunable = tfsdn.densenet.DenseNet(depth=_cifar_depth(net),
                                       growth_rate=12)
    stock = tfsdn.strip(prunable, slice_cost_macs=0, pool_first=False).model
  wrapped = tfsdn.prune_dense_connections(
      prunable, tfsdn.StagedSparsity([(measuring_stage or 10**6, 0.5)]))
  return stock, wrapped, shape


def time_training(net, image_size, batch_size, steps, rounds):
  """Median step times of the stock and the wrapped model, side by side."""
  # A stage right after the timed steps: every timed step measures the
  # statistics (`tfsdn.common.stages.statistics_window`); and one far past them:
  # the steps between stages, which do not.
  timed_steps = steps * rounds
  stock, measuring, shape = models(net, image_size, timed_steps + 1)
  _, between, _ = models(net, image_size)
  window = tfsdn.common.stages.statistics_window(
      tfsdn.prunable_layers(measuring)[0].score_momentum)
  if window is not None and window < timed_steps:
    raise ValueError(f"--steps * --rounds = {timed_steps} steps do not fit "
                     f"in the statistics' window of {window} steps.")
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (batch_size * steps,) + shape).astype(
      "float32")
  labels = rng.integers(0, 10, batch_size * steps)
  def callbacks():
    return [tfmot.sparsity.keras.UpdatePruningStep(), tfsdn.UpdateScores()]
  runs = {"stock": (stock, []),
          "wrapped_measuring": (measuring, callbacks()),
          "wrapped_between_stages": (between, callbacks())}
  times = {name: [] for name in runs}
  for name, (model, _) in runs.items():
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
  for round_ in range(rounds):
    for name, (model, callbacks) in runs.items():
      timer = _StepTimes()
      model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0,
                shuffle=False, callbacks=callbacks + [timer])
      if round_ > 0:  # The first round traces and warms up.
        times[name] += timer.times
  medians = {name: float(np.median(t)) for name, t in times.items()}
  return {"net": net, "input_shape": list(shape), "batch_size": batch_size,
          "steps_timed": {name: len(t) for name, t in times.items()},
          "median_step_seconds": medians,
          "over_stock": {name: medians[name] / medians["stock"]
                         for name in runs if name != "stock"},
          "statistics_window_steps": window,
          "prunable_layers": len(tfsdn.prunable_layers(measuring))}


def _define_flags():
  # Defined only when run as a script, so tests can import this module
  # beside other benchmarks whose flags share these names.
  flags.DEFINE_list("nets", ["densenet121", "densenet40"],
                    "densenet121, densenet169, densenet201 (applications) or "
                    "densenetD (tfsdn's CIFAR DenseNet of depth D).")
  flags.DEFINE_integer("image_size", 64, "DenseNet-121's input size.")
  flags.DEFINE_integer("batch_size", 32, "Training batch size.")
  flags.DEFINE_integer("steps", 4, "Steps per model per round.")
  flags.DEFINE_integer("rounds", 4, "Interleaved rounds; the first is a warm-up.")
  flags.DEFINE_string("output", None, "JSON file to write.")


def main(argv):
  del argv
  for net in FLAGS.nets:
    try:
      check_net(net)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
  if FLAGS.rounds < 2:
    raise app.UsageError(f"--rounds must be >= 2 (the first is a warm-up); "
                         f"got {FLAGS.rounds}")
  result = {"load_average_before": list(os.getloadavg()), "nets": []}
  for net in FLAGS.nets:
    row = time_training(net, FLAGS.image_size, FLAGS.batch_size, FLAGS.steps,
                        FLAGS.rounds)
    result["nets"].append(row)
    seconds = row["median_step_seconds"]
    print(f"{net} {tuple(row['input_shape'])} batch {row['batch_size']}: "
          f"stock {seconds['stock']:.3f} s per step; wrapped, measuring "
          f"statistics {seconds['wrapped_measuring']:.3f} s "
          f"({row['over_stock']['wrapped_measuring']:.3f}x), between stages "
          f"{seconds['wrapped_between_stages']:.3f} s "
          f"({row['over_stock']['wrapped_between_stages']:.3f}x)", flush=True)
  result["load_average_after"] = list(os.getloadavg())
  if FLAGS.output:
    write_json(FLAGS.output, result)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
