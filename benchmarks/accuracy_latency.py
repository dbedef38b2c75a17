r"""Accuracy against latency: the evidence arms as a user would deploy them.

Reads a folder of `evidence.py` results and, for every (arm, seed), runtime
and batch size, exports the model a user would serve there:

- an arm that pruned connections (it has `ARM.pruned.keras`): its pruned
  model stripped for that runtime and batch size,
  `tfsdn.strip(pruned, target=tfsdn.Target(runtime, batch_size))`. The
  default path is the batch-1 model: `strip(pruned)` then an export to the
  runtime lays the model out for `Target(runtime, 1)`
  (`tfsdn.common.provenance`);
- any other arm (`dense`, `narrow_dense`): its all-live tfsdn DenseNet,
  rebuilt from its compact model `ARM.keras` (`unstripped`: same weights,
  checked to compute the same function), stripped for the same target, so
  that every arm is timed in the layout the planner picks for the runtime
  (running concatenations and unfused batch norm in TF, fused in ONNX).

Each stripped model is checked against the arm's committed compact model on
test images (largest difference of the logits, in the JSON). All of one
runtime's models are then timed side by side in one process that loads only
that runtime (interleaved rounds, the median; `runtime_timing`), with the
processes named by --pause_pids stopped (SIGSTOP) while timing and resumed
after, and the load average recorded. The JSON has, per runtime and batch
size, every (arm, seed)'s ms per image, its speed against the same seed's
dense model and its test accuracy, the means per arm, and which arms are on
the accuracy-latency front (no other arm's mean is both faster and more
accurate). The plot has one panel per runtime and batch size: test
accuracy against ms per image, each seed's point small, the arm's mean
large.

  python benchmarks/accuracy_latency.py \
      --results_dir=docs/evidence/cifar10_d40_latency \
      --runtimes=tf,tf_xla,litert,onnx --batch_sizes=1,32 \
      --output=docs/evidence/cifar10_d40_latency/latency.json \
      --plot=docs/evidence/cifar10_d40_latency/latency.png
"""

import os
import shutil
import tempfile

from absl import app
from absl import flags
from absl import logging
import numpy as np

import tfsdn
from tfsdn.compat import keras
from tfsdn.files import atomic_path
from tfsdn.files import write_json
import results_io
import runtime_timing

FLAGS = flags.FLAGS
RUNTIMES = ("tf", "tf_xla", "litert", "onnx")


def _define_flags():
  flags.DEFINE_string("results_dir", None, "An evidence.py --output_dir.")
  flags.DEFINE_list("arms", [], "Arms to time (default: every arm there).")
  flags.DEFINE_list("seeds", [], "Seeds to time (default: every seed).")
  flags.DEFINE_list("runtimes", list(RUNTIMES), f"Of {RUNTIMES}.")
  flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to time.")
  flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.",
                       lower_bound=1)
  flags.DEFINE_float("seconds", 1.0,
                     "Seconds per model, batch size and round.",
                     lower_bound=0.001)
  flags.DEFINE_integer("threads", 2, "Threads of LiteRT and ONNX Runtime.",
                       lower_bound=1)
  flags.DEFINE_list("pause_pids", [],
                    "Processes stopped (SIGSTOP) while timing, resumed "
                    "(SIGCONT) after: a background training, say.")
  flags.DEFINE_string("output", None, "JSON written here.")
  flags.mark_flag_as_required("output")
  flags.DEFINE_string("plot", None, "PNG written here, if given.")
  flags.DEFINE_integer("check_images", 64,
                       "Random images each stripped model is checked on.",
                       lower_bound=1)


def parse_batch_sizes(values):
  """--batch_sizes as sorted distinct ints >= 1; errors name the value."""
  sizes = set()
  for value in values:
    try:
      size = int(value)
    except ValueError:
      size = 0
    if size < 1:
      raise app.UsageError(
          f"--batch_sizes must be integers >= 1. Received: {value!r}")
    sizes.add(size)
  return sorted(sizes)


def loaded_models(result_dir, arm, result, config):
  """`(compact, source)` of one (arm, seed), loaded once for every runtime.

  `source` is the model the arm is stripped from for each target: its
  `ARM.pruned.keras`, or for an arm without one its all-live rebuild
  (`unstripped`); None if it cannot be rebuilt (then the compact model, its
  exact strip, is served at every batch size).
  """
  compact = keras.models.load_model(os.path.join(result_dir, f"{arm}.keras"))
  pruned_path = result.get("pruned_model_path")
  if pruned_path:
    return compact, keras.models.load_model(
        os.path.join(result_dir, os.path.basename(pruned_path)))
  source = unstripped(compact, config,
                      result.get("growth_rate", config["growth_rate"]))
  if source is None:
    logging.warning("%s: not rebuilt all-live; served as its exact strip",
                    arm)
  return compact, source


def deployed_models(arm, compact, source, runtime, batch_sizes):
  """`{(name, batch size or None): Keras model}` a user serves in `runtime`.

  None as the batch size: the same model at every batch size (an arm that
  could not be rebuilt all-live, served as its exact strip).
  """
  if source is None:
    return {(arm, None): compact}
  return {(arm, b): tfsdn.strip(
      source, target=tfsdn.Target(runtime, batch_size=b)).model
          for b in batch_sizes}


def unstripped(compact, config, growth_rate):
  """The all-live tfsdn DenseNet whose exact strip is `compact`, or None.

  For an arm without a model before the strip (`dense`, `narrow_dense`):
  built as `evidence.py` built it (`config`, `growth_rate`), its weights
  copied from `compact` by layer name, and checked to compute the same
  function (None if it does not), so that it can be stripped for a target
  as the pruned arms are: a stock DenseNet in its fastest layout for the
  runtime, not in the exact strip's (one concatenation per layer, fused
  batch norm, which oneDNN runs slowly for channel counts that are not a
  multiple of 4).
  """
  import experiment  # pylint: disable=g-import-not-at-top
  model = experiment.build_densenet(
      dict(config, seed=0, growth_rate=growth_rate), "expected_l1")
  by_name = {layer.name: layer for layer in compact.layers}
  for layer in model.layers:
    if isinstance(layer, tfsdn.PrunableConcatConv):
      pairs = ((layer.batch_norm, by_name.get(f"{layer.name}_bn")),
               (layer.conv, by_name.get(layer.name)))
    else:
      pairs = ((layer, by_name.get(layer.name)),)
    for target, source in pairs:
      if not target.weights:
        continue
      if source is None or [tuple(w.shape) for w in source.weights] != [
          tuple(w.shape) for w in target.weights]:
        return None
      target.set_weights(source.get_weights())
  images = np.random.default_rng(0).uniform(
      0, 255, (8,) + tuple(compact.inputs[0].shape[1:])).astype("float32")
  if not np.allclose(model(images, training=False).numpy(),
                     compact(images, training=False).numpy(), atol=1e-4):
    return None
  return model


def export(model, runtime, path):
  """Exports a compact model for `runtime`; returns what the timer loads."""
  if runtime in ("tf", "tf_xla"):
    return tfsdn.export_saved_model(model, path, xla=runtime == "tf_xla")
  if runtime == "litert":
    return tfsdn.export_tflite(model, path + ".tflite")
  if runtime == "onnx":
    return tfsdn.export_onnx(model, path + ".onnx")
  raise app.UsageError(f"--runtimes: {runtime!r} is not one of {RUNTIMES}")


def front(points):
  """Names of the points no other point beats in both latency and accuracy.

  Args:
    points: name -> (ms per image, accuracy).
  """
  return sorted(
      name for name, (ms, acc) in points.items()
      if not any(o_ms <= ms and o_acc >= acc and (o_ms, o_acc) != (ms, acc)
                 for other, (o_ms, o_acc) in points.items() if other != name))


def main(argv):
  del argv
  if not FLAGS.results_dir:
    raise app.UsageError("--results_dir is required.")
  batch_sizes = parse_batch_sizes(FLAGS.batch_sizes)
  for runtime in FLAGS.runtimes:
    if runtime not in RUNTIMES:
      raise app.UsageError(
          f"--runtimes must be of {RUNTIMES}. Received: {runtime!r}")
  try:
    paused = runtime_timing.pause_pids(FLAGS.pause_pids)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  for name in ("runtimes", "arms", "seeds"):
    values = FLAGS[name].value
    if len(set(values)) != len(values):
      raise app.UsageError(f"--{name} lists a value twice. Received: "
                           f"{','.join(values)}")
  for seed in FLAGS.seeds:
    if not (seed.isascii() and seed.isdigit()):
      raise app.UsageError(f"--seeds takes whole numbers. Received: {seed!r}")
  config, _, results = results_io.load(FLAGS.results_dir)
  arms = FLAGS.arms or sorted(results)
  for arm in arms:
    if arm not in results:
      raise app.UsageError(f"--arms: {arm!r} has no result in "
                           f"{FLAGS.results_dir!r} (there: {sorted(results)})")
  if "dense" not in arms:
    raise app.UsageError("--arms must include 'dense' (speeds are against "
                         f"it). Received: {arms}")
  complete = set.intersection(*(set(results[a]) for a in arms))
  seeds = sorted({int(s) for s in FLAGS.seeds} if FLAGS.seeds else complete)
  if not seeds or set(seeds) - complete:
    raise app.UsageError(
        f"--seeds: every arm of {arms} has results for seeds "
        f"{sorted(complete)} only. Received: {FLAGS.seeds or 'all'}")
  images = np.random.default_rng(0).uniform(
      0, 255, (FLAGS.check_images, 32, 32, 3)).astype("float32")
  workdir = tempfile.mkdtemp(prefix="accuracy_latency_")
  out = {"results_dir": FLAGS.results_dir, "arms": arms, "seeds": seeds,
         "batch_sizes": batch_sizes, "rounds": FLAGS.rounds,
         "seconds": FLAGS.seconds, "threads": FLAGS.threads,
         "paused_pids": paused,
         "runtimes": {}}
  loaded = {(arm, seed): loaded_models(
      os.path.join(FLAGS.results_dir, f"seed{seed}"), arm,
      results[arm][seed], config) for seed in seeds for arm in arms}
  try:
    for runtime in FLAGS.runtimes:
      paths, accuracy, check = {}, {}, {}
      for seed in seeds:
        for arm in arms:
          result = results[arm][seed]
          compact, source = loaded[(arm, seed)]
          reference = compact(images).numpy()
          for (name, b), model in deployed_models(
              arm, compact, source, runtime, batch_sizes).items():
            key = f"{name}@s{seed}" + (f"@b{b}" if b else "")
            check[key] = float(np.max(np.abs(model(images).numpy() -
                                             reference)))
            if check[key] > 1e-3:
              raise AssertionError(f"{key}: its strip changed the function "
                                   f"(largest logit difference {check[key]})")
            paths[key] = export(model, runtime, os.path.join(
                workdir, runtime, key.replace("/", "_")))
            accuracy[(name, seed)] = result["test_accuracy"]
          logging.info("%s: exported %s, seed %d", runtime, arm, seed)
      load_before = os.getloadavg()
      with runtime_timing.Paused(paused):
        throughput, _ = runtime_timing.time_in_child(
            runtime, paths, batch_sizes, FLAGS.rounds, FLAGS.seconds,
            FLAGS.threads)
      load_after = os.getloadavg()
      logging.info("%s: timed", runtime)
      out["runtimes"][runtime] = _summarize(
          throughput, accuracy, check, batch_sizes, seeds)
      out["runtimes"][runtime]["load_average"] = {"before": load_before,
                                                  "after": load_after}
      write_json(FLAGS.output, out)  # What is timed so far.
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  print(table(out))
  if FLAGS.plot:
    plot(out, FLAGS.plot)


def _summarize(throughput, accuracy, check, batch_sizes, seeds):
  """Per batch size: each (name, seed)'s figures, each name's means, front."""
  by_batch = {}
  names = sorted({name for name, _ in accuracy})
  for b in batch_sizes:
    points = {}
    for name in names:
      for seed in seeds:
        if (name, seed) not in accuracy:
          continue
        key, dense = (next(k for k in (f"{n}@s{seed}@b{b}", f"{n}@s{seed}")
                           if (k, b) in throughput)
                      for n in (name, "dense"))
        dense = throughput[(dense, b)]
        points.setdefault(name, []).append({
            "seed": seed, "ms_per_image": 1000 / throughput[(key, b)],
            "speed_vs_dense": throughput[(key, b)] / dense,
            "test_accuracy": accuracy[(name, seed)],
            "stripped_for_target": key.endswith(f"@b{b}"),
            "largest_logit_difference": check[key]})
    means = {name: {
        "ms_per_image": float(np.mean([p["ms_per_image"] for p in ps])),
        "speed_vs_dense": float(np.mean([p["speed_vs_dense"] for p in ps])),
        "test_accuracy": float(np.mean([p["test_accuracy"] for p in ps]))}
             for name, ps in points.items()}
    by_batch[str(b)] = {"points": points, "means": means, "front": front(
        {n: (m["ms_per_image"], m["test_accuracy"])
         for n, m in means.items()})}
  return by_batch


def table(out):
  """Markdown: runtime, batch, arm, speed vs dense, ms/image, accuracy."""
  lines = ["| runtime | batch | arm | speed vs dense | ms/image | test acc. "
           "| on the front |", "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
  for runtime, by_batch in out["runtimes"].items():
    for b, summary in by_batch.items():
      if b == "load_average":
        continue
      for name, m in sorted(summary["means"].items(),
                            key=lambda item: item[1]["ms_per_image"]):
        lines.append(
            f"| {runtime} | {b} | {name} | {m['speed_vs_dense']:.2f}x | "
            f"{m['ms_per_image']:.3f} | {100 * m['test_accuracy']:.2f}% | "
            f"{'yes' if name in summary['front'] else ''} |")
  return "\n".join(lines)


def plot(out, path):
  """One panel per (runtime, batch): accuracy against ms per image."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = [(r, b) for r, by_batch in out["runtimes"].items()
            for b in by_batch if b != "load_average"]
  columns = len(out["batch_sizes"])
  rows = -(-len(panels) // columns)
  figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows),
                              squeeze=False)
  names = sorted({n for r, b in panels
                  for n in out["runtimes"][r][b]["means"]})
  colors = {n: f"C{i}" for i, n in enumerate(names)}
  for axis, (runtime, b) in zip(axes.flat, panels):
    summary = out["runtimes"][runtime][b]
    for name, points in summary["points"].items():
      axis.scatter([p["ms_per_image"] for p in points],
                   [100 * p["test_accuracy"] for p in points], s=12,
                   color=colors[name], alpha=0.5)
      mean = summary["means"][name]
      axis.scatter([mean["ms_per_image"]], [100 * mean["test_accuracy"]],
                   s=70, color=colors[name], label=name,
                   marker="*" if name in summary["front"] else "o")
    axis.set_title(f"{runtime}, batch {b}")
    axis.set_xlabel("ms per image")
    axis.set_ylabel("test accuracy (%)")
  for axis in list(axes.flat)[len(panels):]:
    axis.axis("off")
  axes.flat[0].legend(fontsize=7)
  figure.tight_layout()
  with atomic_path(path, suffix=".png") as tmp:
    figure.savefig(tmp, dpi=100)
  plt.close(figure)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
