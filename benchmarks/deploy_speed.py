r"""Dense against compact DenseNet where models are deployed, side by side.

Exports a dense DenseNet and the compact model `tfsdn.strip` makes of a
pruned one to every runtime asked for, and times both side by side,
interleaving rounds so machine noise hits both alike (median of --rounds),
each runtime in its own process that loads only it (--noisolate: all in
this one):
TF SavedModel (plain, XLA, and plain with XLA auto-clustering of fusible
ops: `tf_fusible`), LiteRT (float32, float16 weights and full-integer
int8; XNNPACK, --threads threads) and ONNX Runtime (via tf2onnx). Reports
images/s, compact/dense ratios, file sizes, op counts of the converted
graphs, and how far each runtime's compact output is from the Keras model.

The pruned model is a `final_model.keras` of examples/train_cifar.py
(--pruned_model: sparsity patterns tfsdn's training produced); without it,
a DenseNet of --depth is built here and every layer pruned at random to
--sparsity, or with --pattern=prefixes to prefixes of its producers, the
best case for slices (said so in the JSON). The dense model is the same
network with every input channel live; with --max_concat_inputs=0,5 both
come with and without concatenations of at most 5 inputs (suffix _c5),
with --pool_first every model also comes with its transitions pooling
before their 1x1 convolution (suffix _pf), with --reuse_concats with
concatenations that start from an earlier layer's (suffix _r; the dense
one then has a DenseNet's running concatenations), with
--unfused_batch_norm with every BatchNormalization unfused (suffix _u), with --targets with `strip(pruned, target=...)` for each target and
`default` (`strip(pruned)`, exported as a user's export does it: laid out
again for each runtime at batch 1, `tfsdn.common.provenance`; its `macs`
and `slices` in the JSON are the TF layout's), and
each compact model is compared with the fastest dense model of each
runtime and batch size. --pause_pids stops a background run while timing. With --dataset, int8 is calibrated on training
images and --eval_images test images measure each format's accuracy (of
the compact model).

  python benchmarks/deploy_speed.py --pruned_model=run/final_model.keras \
      --dataset=tfrecord:../shared/data/cifar10 \
      --output=benchmarks/results/deploy_speed.json

The commands behind the published figures (docs/deploy_speed_targets_*.json)
are in docs/deployment.md, "Strip for where it runs".
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
from tfsdn import testing
from tfsdn.compat import keras
from tfsdn.files import write_json
import runtime_timing
from runtime_timing import litert_serve
from runtime_timing import time_rounds

FLAGS = flags.FLAGS
PATTERNS = ("random", "prefixes")
flags.DEFINE_string("pruned_model", None,
                    "A pruned model (.keras), e.g. a final_model.keras of "
                    "examples/train_cifar.py; default: --pattern.")
flags.DEFINE_integer("depth", 40, "DenseNet depth (without --pruned_model).")
flags.DEFINE_integer("growth_rate", 12,
                     "Growth rate (without --pruned_model).")
flags.DEFINE_float("sparsity", 0.5,
                   "Sparsity of every layer, in [0, 1) (without "
                   "--pruned_model).")
flags.register_validator("sparsity", lambda value: 0 <= value < 1,
                         message="--sparsity must be in [0, 1)")
flags.DEFINE_enum("pattern", "random", list(PATTERNS),
                  "Without --pruned_model: random (prune_at_random, every "
                  "layer at --sparsity) or prefixes (prune_to_prefixes: "
                  "each layer reads its newest input whole and the first "
                  "1 - --sparsity of every other producer, the best case "
                  "for slices).")
flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes to time.")
flags.DEFINE_list("runtimes", ["tf", "tf_xla", "litert", "litert_int8",
                               "onnx"],
                  "Runtimes to time: tf, tf_xla, tf_fusible (the plain "
                  "SavedModel with XLA auto-clustering of fusible ops; "
                  "needs --isolate), litert (float32), "
                  "litert_f16 (float16 weights), litert_int8, onnx.")
flags.DEFINE_list("channel_reads", ["slice"],
                  "How compact models read channel ranges (strip's "
                  "channel_reads): slice, split and/or gather; split and "
                  "gather models get a _split or _gather suffix.")
flags.DEFINE_bool("isolate", True,
                  "Time each runtime in its own process, which loads only "
                  "that runtime, as it is deployed (--noisolate: all in this "
                  "process, beside TensorFlow and the other runtimes).")
flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds.")
flags.DEFINE_list("pause_pids", [],
                  "Processes stopped (SIGSTOP) while timing, resumed "
                  "(SIGCONT) after: a background training, say.")
flags.DEFINE_float("seconds", 2.0, "Seconds per model per round and batch.")
flags.DEFINE_integer("threads", 2, "Threads of LiteRT and ONNX Runtime.")
flags.DEFINE_string("dataset", None, "tfrecord:DIR for calibration and "
                    "accuracy; default: random calibration images.")
flags.DEFINE_integer("calibration_images", 256, "int8 calibration images.")
flags.DEFINE_integer("eval_images", 1000, "Test images for accuracy.")
flags.DEFINE_string("output", "benchmarks/results/deploy_speed.json",
                    "JSON results.")
flags.DEFINE_integer("seed", 0, "Seed of random patterns and images.")
flags.DEFINE_list("slice_cost_macs", ["0", "500000"],
                  "One compact model per value: tfsdn.strip's slice_cost_macs "
                  "(0: exact live channels; more: fewer slices, more MACs).")
flags.DEFINE_list("max_concat_inputs", ["0"],
                  "tfsdn.strip's max_concat_inputs: 0 for one concatenation "
                  "per layer; each value N >= 2 adds a dense and compact "
                  "models with concatenations of at most N inputs (suffix "
                  "_cN). Each compact model is compared with the fastest "
                  "dense model in each runtime and batch size.")
flags.DEFINE_bool("pool_first", False,
                  "Also time every model, dense included, stripped with "
                  "tfsdn.strip's pool_first=True (transitions pool before "
                  "their 1x1 convolution; suffix _pf).")
flags.DEFINE_bool("reuse_concats", False,
                  "Also time every model, dense included, stripped with "
                  "tfsdn.strip's reuse_concats=True (a layer's "
                  "concatenation starts from an earlier layer's, as a "
                  "DenseNet's running concatenation does; suffix _r).")
flags.DEFINE_list("targets", [],
                  "tfsdn.Target(runtime, batch_size)s, as runtime@batch "
                  "(e.g. tf@1,onnx@32): one compact model each, stripped "
                  "with strip(pruned, target=...) (named target_RUNTIME_bB), "
                  "beside the default strip(pruned) (named default) and the "
                  "dense model stripped with the default options too "
                  "(dense_default).")
flags.DEFINE_list("target_slice_costs", [],
                  "Also strip for each --targets target with each of these "
                  "slice costs (MACs) instead of the target's own, its other "
                  "options unchanged (named target_RUNTIME_bB_sCOST): to time "
                  "a runtime's cost model against another side by side.")
flags.DEFINE_bool("unfused_batch_norm", False,
                  "Also time every model, dense included, stripped with "
                  "tfsdn.strip's fused_batch_norm=False (BatchNormalization "
                  "as a multiply and an add; suffix _u).")


def pruned_and_dense(pruned_model=None, depth=40, growth_rate=12,
                     sparsity=0.5, pattern="random", seed=0):
  """(pruned model, same network with every channel live, patterns).

  Args:
    pruned_model: A pruned model's `.keras` file; None: a DenseNet of
      `depth` and `growth_rate`, pruned to `sparsity` by `pattern`.
    depth: DenseNet depth (without `pruned_model`).
    growth_rate: Growth rate (without `pruned_model`).
    sparsity: Sparsity of every layer (without `pruned_model`).
    pattern: `"random"` (`testing.prune_at_random`, seeded by `seed`) or
      `"prefixes"` (`testing.prune_to_prefixes`: each layer reads its newest
      input whole and the first 1 - `sparsity` of every other producer, the
      best case for slices).
    seed: Seed of the random pattern.

  Returns:
    (pruned, dense, patterns): `patterns` says where the pruning came from
    (the file, or the pattern with the network, sparsity and seed).

  Raises:
    ValueError: `pattern` is not one of `PATTERNS`.
  """
  if pattern not in PATTERNS:
    raise ValueError(f"pattern must be one of {PATTERNS}. Received: "
                     f"{pattern!r}")
  if pruned_model:
    pruned = keras.models.load_model(pruned_model)
    dense = keras.models.load_model(pruned_model)
    patterns = f"trained: {pruned_model}"
  else:
    pruned = tfsdn.densenet.DenseNet(depth, growth_rate)
    if pattern == "prefixes":
      testing.prune_to_prefixes(pruned, sparsity)
      patterns = (f"prefixes (prune_to_prefixes, DenseNet-{depth}, "
                  f"k={growth_rate}, sparsity {sparsity})")
    else:
      testing.prune_at_random(pruned, sparsity, seed)
      patterns = (f"random (prune_at_random, DenseNet-{depth}, "
                  f"k={growth_rate}, sparsity {sparsity}, seed {seed})")
    dense = tfsdn.densenet.DenseNet(depth, growth_rate)
    dense.set_weights(pruned.get_weights())
  for layer in tfsdn.prunable_layers(dense):
    layer.contribution_score.assign(np.ones(layer.input_channels, "float32"))
  return pruned, dense, patterns


class _Result:
  """What a runtime returns, read like a TF tensor by `time_rounds`."""

  def __init__(self, value):
    self.value = value

  def numpy(self):
    return self.value


def _litert(path):
  serve, interpreter_for = litert_serve(path, FLAGS.threads)
  ops = collections.Counter(
      op["op_name"] for op in interpreter_for(1)._get_ops_details())  # pylint: disable=protected-access
  return (lambda images: {"logits": _Result(serve(images))}), dict(ops)


def _onnx(path):
  import onnx  # pylint: disable=g-import-not-at-top
  session = runtime_timing.onnx_session(path, FLAGS.threads)
  name = session.get_inputs()[0].name

  def serve(images):
    return {"logits": _Result(session.run(
        None, {name: np.asarray(images, np.float32)})[0])}

  ops = collections.Counter(node.op_type
                            for node in onnx.load(path).graph.node)
  return serve, dict(ops)


def _size(path):
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


# Runtimes that serve the SavedModel (tf_fusible: the plain one, timed with
# `runtime_timing.FUSIBLE_XLA_FLAGS`).
TF_RUNTIMES = ("tf", "tf_xla", "tf_fusible")
_LITERT_QUANTIZATION = {"litert": None, "litert_f16": "float16",
                        "litert_int8": "int8"}


def export_all(name, model, workdir, calibration):
  """`{runtime key: (serve, path, op counts)}` for one model."""
  out = {}
  for runtime in FLAGS.runtimes:
    key = f"{name}/{runtime}"
    if runtime == "tf_fusible":
      # The plain SavedModel, timed in a process with its TF_XLA_FLAGS. This
      # process cannot serve it that way, so it has no `serve`: no output
      # difference or accuracy of its own (tests check what XLA clusters).
      path = out[f"{name}/tf"][1] if f"{name}/tf" in out else (
          tfsdn.export_saved_model(model, os.path.join(workdir, key)))
      out[key] = (None, path, {})
    elif runtime in TF_RUNTIMES:
      path = tfsdn.export_saved_model(model, os.path.join(workdir, key),
                                      xla=runtime == "tf_xla")
      out[key] = (tf.saved_model.load(path).signatures["serving_default"],
                  path, {})
    elif runtime in _LITERT_QUANTIZATION:
      path = tfsdn.export_tflite(
          model, os.path.join(workdir, f"{name}_{runtime}.tflite"),
          quantization=_LITERT_QUANTIZATION[runtime],
          representative_images=calibration)
      serve, ops = _litert(path)
      out[key] = (serve, path, ops)
    elif runtime == "onnx":
      path = tfsdn.export_onnx(model, os.path.join(workdir, f"{name}.onnx"))
      serve, ops = _onnx(path)
      out[key] = (serve, path, ops)
    else:
      raise app.UsageError(f"Unknown runtime {runtime!r} in --runtimes.")
  return out


def _slice_costs(values, flag="slice_cost_macs"):
  """--slice_cost_macs (or `flag`) as sorted, distinct whole numbers of MACs."""
  try:
    costs = [int(float(v)) for v in values]
  except (ValueError, OverflowError) as e:
    raise app.UsageError(
        f"--{flag} takes whole numbers of MACs >= 0. Received: "
        f"{','.join(values)}") from e
  if not costs or min(costs) < 0 or len(set(costs)) != len(costs) or any(
      float(v) != c for v, c in zip(values, costs)):
    raise app.UsageError(
        f"--{flag} takes distinct whole numbers of MACs >= 0, at "
        f"least one. Received: {','.join(values)}")
  return sorted(costs)


def _concat_limits(values):
  """--max_concat_inputs as sorted, distinct None (for 0) or ints >= 2."""
  try:
    limits = [int(v) for v in values]
  except ValueError as e:
    raise app.UsageError(
        "--max_concat_inputs takes 0 or whole numbers >= 2. Received: "
        f"{','.join(values)}") from e
  if not limits or len(set(limits)) != len(limits) or any(
      v < 0 or v == 1 for v in limits):
    raise app.UsageError(
        "--max_concat_inputs takes distinct values, 0 or whole numbers >= 2, "
        f"at least one. Received: {','.join(values)}")
  return [v or None for v in sorted(limits)]


def _targets(values):
  """--targets as `tfsdn.Target`s."""
  targets = []
  for value in values:
    runtime, _, batch = value.partition("@")
    try:
      targets.append(tfsdn.Target(runtime, int(batch)))
    except ValueError as e:
      raise app.UsageError(
          f"--targets takes runtime@batch, runtime one of "
          f"{tfsdn.common.deploy_target.RUNTIMES}. Received: {value!r}") from e
  return targets


def _concat_suffix(limit):
  """`_c5` for max_concat_inputs 5, nothing for no bound."""
  return f"_c{limit}" if limit else ""


def _compact_name(cost):
  """`compact` for the exact strip, `compact_s500000` for slice cost 500,000."""
  return f"compact_s{cost}" if cost else "compact"


def _slice_count(model):
  """Channel slices (or splits, or gathers) in the compact Keras model."""
  return sum(1 for layer in model.layers
             if "strided_slice" in type(layer).__name__.lower() or
             layer.name.startswith(("tf.__operators__.getitem", "tf.split",
                                    "tf.compat.v1.gather")))


def _largest_concat(model):
  """Inputs of the largest concatenation in the Keras model (0: none)."""
  return max((len(layer.input) for layer in model.layers
              if isinstance(layer, keras.layers.Concatenate)), default=0)


def _accuracy(serve, data):
  correct = total = 0
  for images, labels in data:
    logits = serve(images=images.numpy())["logits"].numpy()
    correct += int((np.argmax(logits, -1) == labels.numpy()).sum())
    total += len(labels)
  return correct / total


def _time(served, batch_sizes, image_shape):
  """`{(runtime key, batch size): images/s}` of every exported model."""
  if not FLAGS.isolate:
    with runtime_timing.Paused(FLAGS.pause_pids):
      return time_rounds({k: v[0] for k, v in served.items()},
                         batch_sizes, FLAGS.rounds, FLAGS.seconds,
                         image_shape)
  throughput = {}
  for runtime in FLAGS.runtimes:
    models = {key: path for key, (_, path, _) in served.items()
              if key.endswith(f"/{runtime}")}
    with runtime_timing.Paused(FLAGS.pause_pids):
      timed, imported_tf = runtime_timing.time_in_child(
          runtime, models, batch_sizes, FLAGS.rounds, FLAGS.seconds,
          FLAGS.threads, image_shape)
    if imported_tf and runtime not in TF_RUNTIMES:
      raise AssertionError(f"The {runtime} timing process imported TF.")
    logging.info("timed %s in its own process", runtime)
    throughput.update(timed)
  return throughput


def main(argv):
  del argv
  if "tf_fusible" in FLAGS.runtimes and not FLAGS.isolate:
    raise app.UsageError(
        "--runtimes=tf_fusible needs --isolate: TensorFlow reads "
        "TF_XLA_FLAGS when it starts, so only a fresh process can have it.")
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  try:
    paused = runtime_timing.pause_pids(FLAGS.pause_pids)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  costs = _slice_costs(FLAGS.slice_cost_macs)
  target_costs = (_slice_costs(FLAGS.target_slice_costs,
                                 "target_slice_costs")
                  if FLAGS.target_slice_costs else [])
  if target_costs and not FLAGS.targets:
    raise app.UsageError("--target_slice_costs needs --targets.")
  pruned, dense_source, patterns = pruned_and_dense(
      FLAGS.pruned_model, FLAGS.depth, FLAGS.growth_rate, FLAGS.sparsity,
      FLAGS.pattern, FLAGS.seed)
  image_shape = tuple(int(d) for d in pruned.inputs[0].shape[1:])
  reads = FLAGS.channel_reads
  if not reads or set(reads) - set(tfsdn.compact.CHANNEL_READS) or len(
      set(reads)) != len(reads):
    raise app.UsageError(
        f"--channel_reads takes distinct values of "
        f"{tfsdn.compact.CHANNEL_READS}. Received: {','.join(reads)}")
  limits = _concat_limits(FLAGS.max_concat_inputs)
  stripped, model_costs = {}, {}
  # (suffix, strip arguments) of each graph option timed; the base one is
  # the exact strip as it was before targets (explicit options).
  options = [("", dict(pool_first=False, reuse_concats=False,
                      fused_batch_norm=True))]
  if FLAGS.pool_first:
    options += [(suffix + "_pf", dict(kwargs, pool_first=True))
                for suffix, kwargs in options]
  if FLAGS.reuse_concats:
    options += [(suffix + "_r", dict(kwargs, reuse_concats=True))
                for suffix, kwargs in options]
  if FLAGS.unfused_batch_norm:
    options += [(suffix + "_u", dict(kwargs, fused_batch_norm=False))
                for suffix, kwargs in options]
  for limit in limits:
    for suffix, kwargs in options:
      stripped["dense" + _concat_suffix(limit) + suffix] = tfsdn.strip(
          dense_source, max_concat_inputs=limit, **kwargs)
  denses = list(stripped)
  for cost in costs:
    for read in reads:
      for limit in limits:
        for suffix, kwargs in options:
          name = (_compact_name(cost) + ("" if read == "slice" else f"_{read}")
                  + _concat_suffix(limit) + suffix)
          stripped[name] = tfsdn.strip(pruned, slice_cost_macs=cost,
                                       channel_reads=read,
                                       max_concat_inputs=limit, **kwargs)
          model_costs[name] = cost
  targets = _targets(FLAGS.targets)
  if targets:
    stripped["dense_default"] = tfsdn.strip(dense_source)
    denses = list(denses) + ["dense_default"]
    stripped["default"] = tfsdn.strip(pruned)
    for target in targets:
      stripped[f"target_{target.runtime}_b{target.batch_size}"] = (
          tfsdn.strip(pruned, target=target))
      for cost in target_costs:
        stripped[f"target_{target.runtime}_b{target.batch_size}_s{cost}"] = (
            tfsdn.strip(pruned, target=target, slice_cost_macs=cost))
  reports = {k: tfsdn.model_report(v) for k, v in stripped.items()}
  compacts = [name for name in stripped if name not in denses]
  if FLAGS.dataset:
    calibration = tfsdn.data.representative_images(
        FLAGS.dataset, FLAGS.calibration_images)
  else:
    calibration = [np.random.default_rng(FLAGS.seed).uniform(
        0, 255, (FLAGS.calibration_images,) + image_shape).astype(
            "float32")]
  workdir = tempfile.mkdtemp(prefix="tfsdn-deploy-")
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)  # Exports.
  served = {}
  for name, record in stripped.items():
    served.update(export_all(name, record.model, workdir, calibration))
  images = np.random.default_rng(1).uniform(
      0, 255, (8,) + image_shape).astype("float32")
  reference = stripped[compacts[0]].model(images, training=False).numpy()
  max_diff = {key: float(np.abs(serve(images=images)["logits"].numpy() -
                                reference).max())
              for key, (serve, _, _) in served.items()
              if key.startswith("compact") and serve is not None}
  load_before = os.getloadavg()
  throughput = _time(served, batch_sizes, image_shape)
  load_after = os.getloadavg()
  ideal = min(reports[name].total_macs for name in denses) / min(
      reports[name].total_macs for name in compacts)
  results = {
      "patterns": patterns, "rounds": FLAGS.rounds,
      "seconds_per_round": FLAGS.seconds, "threads": FLAGS.threads,
      "isolated_runtimes": FLAGS.isolate, "pool_first": FLAGS.pool_first,
      "reuse_concats": FLAGS.reuse_concats,
      "unfused_batch_norm": FLAGS.unfused_batch_norm,
      "tensorflow": tf.__version__, "cpus": os.cpu_count(),
      "load_average": {"before_timing": load_before,
                       "after_timing": load_after},
      "paused_pids": paused,
      "params": {k: r.total_params for k, r in reports.items()},
      "macs": {k: r.total_macs for k, r in reports.items()},
      "ideal_speedup_mac_ratio": ideal,
      "compact_max_abs_diff_from_keras": max_diff,
      "images_per_second": {f"{k}@{b}": v for (k, b), v in throughput.items()},
      "file_bytes": {k: _size(v[1]) for k, v in served.items()},
      "ops": {k: v[2] for k, v in served.items() if v[2]},
      "slice_cost_macs": model_costs,
      "slices": {name: _slice_count(record.model)
                 for name, record in stripped.items()},
      "largest_concat": {name: _largest_concat(record.model)
                         for name, record in stripped.items()},
      # The compact model of the lowest slice cost (the exact strip when 0
      # is given) against dense, then every compact model, then the best
      # compact model for each runtime and batch size. "Dense" is the
      # fastest dense model in that runtime and batch size, named in
      # "dense_model".
      "speedup": {}, "speedup_by_model": {name: {} for name in compacts},
      "best": {}, "dense_model": {},
  }
  lines = ["| runtime | batch | dense img/s | " + " | ".join(
      f"{name} img/s (vs dense)" for name in compacts) + " | " +
           " | ".join(f"{name} file" for name in stripped) + " |",
           "|" + " --- |" * (3 + len(compacts) + len(stripped))]
  for runtime in FLAGS.runtimes:
    sizes = [results["file_bytes"][f"{n}/{runtime}"] for n in stripped]
    for b in batch_sizes:
      dense = max(denses, key=lambda n, b=b, r=runtime: throughput[
          (f"{n}/{r}", b)])
      results["dense_model"][f"{runtime}@{b}"] = dense
      dense_speed = throughput[(f"{dense}/{runtime}", b)]
      cells = []
      for name in compacts:
        speed = throughput[(f"{name}/{runtime}", b)]
        results["speedup_by_model"][name][f"{runtime}@{b}"] = (
            speed / dense_speed)
        cells.append(f"{speed:.1f} ({speed / dense_speed:.2f}x)")
      results["speedup"][f"{runtime}@{b}"] = results["speedup_by_model"][
          compacts[0]][f"{runtime}@{b}"]
      best = max(compacts, key=lambda n, key=f"{runtime}@{b}": results[
          "speedup_by_model"][n][key])
      results["best"][f"{runtime}@{b}"] = {
          "model": best,
          "speedup": results["speedup_by_model"][best][f"{runtime}@{b}"]}
      lines.append(f"| {runtime} | {b} | {dense_speed:.1f} ({dense}) | " +
                   " | ".join(cells) + " | " +
                   " | ".join(f"{size / 1e6:.2f} MB" for size in sizes) + " |")
  if FLAGS.dataset and FLAGS.eval_images:
    test = tfsdn.data.make_dataset(FLAGS.dataset, "test", 64,
                                   size=FLAGS.eval_images)
    keras_model = stripped[compacts[0]].model
    results["compact_accuracy"] = {"keras": _accuracy(
        lambda images: {"logits": _Result(keras_model(
            images, training=False).numpy())}, test)}
    for key, (serve, _, _) in served.items():
      if (key.startswith("compact") and not key.endswith("_xla") and
          serve is not None):
        results["compact_accuracy"][key] = _accuracy(serve, test)
    results["eval_images"] = FLAGS.eval_images
  print("\n".join(lines))
  print(f"ideal (MAC ratio) {ideal:.2f}x; patterns: {patterns}")
  for key in ("compact_accuracy", "ops", "compact_max_abs_diff_from_keras"):
    print(key, results.get(key))
  write_json(FLAGS.output, results)
  logging.info("Wrote %s", FLAGS.output)


if __name__ == "__main__":
  app.run(main)
