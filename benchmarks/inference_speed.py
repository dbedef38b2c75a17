r"""Inference speed of a compact sparse DenseNet against the dense one.

Takes a pruned DenseNet (--pruned_model, a trained one) or builds
DenseNet-40 (k=12) and prunes every prunable layer to --sparsity with
random scores (--pattern; this measures speed, not accuracy), strips it with
`tfsdn.strip` (the dense model too, with the same --reuse_concats,
--fused_batch_norm and --pool_first), exports the dense and the compact
model as SavedModels with and without XLA, loads them back as TF Serving
would, and times them side by side in one process, interleaving rounds so
that machine noise hits every model alike. Peak memory is measured in a
fresh process per export. Prints a table and writes JSON.

  python benchmarks/inference_speed.py --output=benchmarks/results/speed.json
"""

import atexit
import os
import shutil
import tempfile

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import tfsdn
from tfsdn.files import write_json
import pruned_models
from serving_timing import memory_mb
from serving_timing import time_rounds

FLAGS = flags.FLAGS
pruned_models.define_flags()
flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes to time.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds per model.")
flags.DEFINE_float("seconds", 3.0, "Seconds per model per round and batch.")
flags.DEFINE_string("output", "benchmarks/results/inference_speed.json",
                    "Where to write the JSON results.")
flags.DEFINE_integer("seed", 0, "Seed of the random pattern.")
pruned_models.define_strip_flags()
flags.adopt_module_key_flags(pruned_models)  # In --help.


def main(argv):
  del argv
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  options = pruned_models.strip_options()
  pruned, dense_source, patterns = pruned_models.from_flags()
  dense_stripped = tfsdn.strip(dense_source, **options)
  dense = dense_stripped.model
  stripped = tfsdn.strip(pruned, **options)
  compact = stripped.model
  images = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype(
      "float32")
  max_diff = float(np.abs(pruned(images, training=False) -
                          compact(images, training=False)).max())
  reports = {"dense": tfsdn.model_report(dense_stripped),
             "compact": tfsdn.model_report(stripped)}
  workdir = tempfile.mkdtemp(prefix="tfsdn-speed-")
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)  # Exports.
  functions, paths = {}, {}
  for name, model in (("dense", dense), ("compact", compact)):
    for xla in (False, True):
      key = f"{name}{'_xla' if xla else ''}"
      paths[key] = tfsdn.export_saved_model(
          model, os.path.join(workdir, key), xla=xla)
      functions[key] = tf.saved_model.load(paths[key]).signatures[
          "serving_default"]
  throughput = time_rounds(functions, batch_sizes, FLAGS.rounds,
                           FLAGS.seconds)
  memory = {key: memory_mb(path, max(batch_sizes))
            for key, path in paths.items()}

  def best(name, batch):
    return max((throughput[(k, batch)], k) for k in functions
               if k.split("_")[0] == name)

  ideal = reports["dense"].total_macs / reports["compact"].total_macs
  results = {
      "patterns": patterns, "rounds": FLAGS.rounds,
      "strip_options": options,
      "seconds_per_round": FLAGS.seconds,
      "tensorflow": tf.__version__, "cpus": os.cpu_count(),
      "compact_vs_pruned_max_abs_diff": max_diff,
      "params": {k: r.total_params for k, r in reports.items()},
      "prunable_params": {k: r.prunable_params for k, r in reports.items()},
      "macs": {k: r.total_macs for k, r in reports.items()},
      "ideal_speedup_mac_ratio": ideal,
      "prunable_params_ratio": (reports["compact"].prunable_params /
                                reports["dense"].prunable_params),
      "images_per_second": {f"{k}@{b}": v for (k, b), v in throughput.items()},
      "rss_after_load_mb": {k: v[0] for k, v in memory.items()},
      "rss_after_serving_mb": {k: v[1] for k, v in memory.items()},
      "peak_rss_mb": {k: v[2] for k, v in memory.items()},
      "speedup_best_vs_best": {},
  }
  lines = ["| model | " + " | ".join(f"img/s @ batch {b}" for b in batch_sizes)
           + f" | RSS MB loaded / serving @ {max(batch_sizes)} | peak RSS MB |",
           "| --- |" + " --- |" * (len(batch_sizes) + 2)]
  for key in functions:
    lines.append(f"| {key} | " + " | ".join(
        f"{throughput[(key, b)]:.1f}" for b in batch_sizes) +
                 f" | {memory[key][0]:.0f} / {memory[key][1]:.0f} | "
                 f"{memory[key][2]:.0f} |")
  for b in batch_sizes:
    (dense_speed, dense_key), (compact_speed, compact_key) = (
        best("dense", b), best("compact", b))
    results["speedup_best_vs_best"][str(b)] = {
        "dense_mode": dense_key, "compact_mode": compact_key,
        "speedup": compact_speed / dense_speed,
        "fraction_of_ideal": compact_speed / dense_speed / ideal,
    }
    lines.append(f"\nbatch {b}: best compact ({compact_key}) / best dense "
                 f"({dense_key}) = {compact_speed / dense_speed:.2f}x; ideal "
                 f"(MAC ratio) {ideal:.2f}x; "
                 f"{compact_speed / dense_speed / ideal:.2f} of ideal")
  lines.append(
      f"\nparameters {reports['dense'].total_params:,} -> "
      f"{reports['compact'].total_params:,}; prunable-layer parameters ratio "
      f"{results['prunable_params_ratio']:.3f}; MACs "
      f"{reports['dense'].total_macs:,} -> {reports['compact'].total_macs:,}")
  print("\n".join(lines))
  write_json(FLAGS.output, results)
  logging.info("Wrote %s", FLAGS.output)


if __name__ == "__main__":
  app.run(main)
