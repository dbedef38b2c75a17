r"""The MAC ceiling of DenseNet-B nets: connections only, or widths as well.

For DenseNet-BC-100 (k=12) and DenseNet-121 (32x32 input), prunes half of
the inputs (random scores: this counts, it does not train) of
  - the layers that prune dense connections only (what tfsdn could prune
    before bottleneck widths were prunable), and
  - every prunable layer (connections and bottleneck widths),
strips, and counts MACs and parameters with `tfsdn.model_report`. With
`--speed`, also exports the dense and the all-pruned compact model as
SavedModels (plain and XLA) and times them side by side at --batch_size.

  python benchmarks/mac_ceiling.py --output=docs/mac_ceiling.json
"""

import os
import tempfile

from absl import app
from absl import flags
from absl import logging

import tfsdn
from tfsdn import testing
from tfsdn.files import write_json
from serving_timing import time_rounds

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["bc100", "densenet121"], "Models to count.")
flags.DEFINE_float("sparsity", 0.5, "Input-channel sparsity of each layer.")
flags.DEFINE_bool("speed", False, "Also time dense against compact.")
flags.DEFINE_integer("batch_size", 64, "Batch size of the timing.")
flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds.")
flags.DEFINE_float("seconds", 3.0, "Seconds per model per round.")
flags.DEFINE_string("output", "benchmarks/results/mac_ceiling.json",
                    "Where the JSON goes.")

BUILDERS = {
    "bc100": lambda: tfsdn.densenet.DenseNet(
        depth=100, growth_rate=12, bottleneck=True, compression=0.5),
    "densenet121": lambda: tfsdn.densenet.DenseNet121(
        input_shape=(32, 32, 3), num_classes=10),
    "bc16": lambda: tfsdn.densenet.DenseNet(
        depth=16, growth_rate=4, bottleneck=True, compression=0.5),
}


def count(name):
  """Dense, connections-pruned and all-pruned reports of one model."""
  dense = tfsdn.strip(BUILDERS[name](), slice_cost_macs=0, pool_first=False)
  roles = {n: layer.prunes for n, layer in dense.layers.items()}
  before = tfsdn.model_report(dense)
  result = {"dense": {"params": before.total_params,
                      "macs": before.total_macs},
            "prunable_layers": {
                "connections": sum(r == "connections" for r in roles.values()),
                "width": sum(r == "width" for r in roles.values())}}
  compact = None
  for label, chosen in (
      ("connections_only", [n for n, r in roles.items()
                            if r == "connections"]),
      ("connections_and_widths", list(roles))):
    model = BUILDERS[name]()
    testing.prune_at_random(model, FLAGS.sparsity, seed=0, layers=chosen)
    stripped = tfsdn.strip(model, slice_cost_macs=0, pool_first=False)
    report = tfsdn.model_report(stripped)
    result[label] = {"params": report.total_params, "macs": report.total_macs,
                     "macs_vs_dense": report.total_macs / before.total_macs}
    compact = stripped.model
  if FLAGS.speed:
    result["speed"] = speed(dense.model, compact)
  return result


def speed(dense, compact):
  """Images/s of dense and compact SavedModels, plain and XLA."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  functions = {}
  with tempfile.TemporaryDirectory() as tmp:
    for label, model in (("dense", dense), ("compact", compact)):
      for mode in ("plain", "xla"):
        path = tfsdn.export_saved_model(
            model, os.path.join(tmp, label, mode), version=1,
            xla=mode == "xla")
        functions[f"{label}/{mode}"] = tf.saved_model.load(
            path).signatures["serving_default"]
    timed = time_rounds(functions, [FLAGS.batch_size], FLAGS.rounds,
                        FLAGS.seconds)
  per = {name: timed[(name, FLAGS.batch_size)] for name in functions}
  best = {label: max((per[f"{label}/{m}"], m) for m in ("plain", "xla"))
          for label in ("dense", "compact")}
  return {"batch_size": FLAGS.batch_size, "images_per_second": per,
          "best_mode": {k: v[1] for k, v in best.items()},
          "compact_vs_dense_best": best["compact"][0] / best["dense"][0]}


def main(argv):
  del argv
  unknown = [m for m in FLAGS.models if m not in BUILDERS]
  if unknown:
    raise app.UsageError(f"--models: unknown {unknown}; choose from "
                         f"{sorted(BUILDERS)}")
  results = {"sparsity": FLAGS.sparsity}
  for name in FLAGS.models:
    logging.info("Counting %s", name)
    results[name] = count(name)
    r = results[name]
    print(f"{name}: dense {r['dense']['macs']:,} MACs; half of the "
          f"connections: {r['connections_only']['macs_vs_dense']:.3f}x; "
          f"half of connections and widths: "
          f"{r['connections_and_widths']['macs_vs_dense']:.3f}x" + (
              f"; compact/dense speed (best modes) "
              f"{r['speed']['compact_vs_dense_best']:.2f}x"
              if "speed" in r else ""))
  write_json(FLAGS.output, results)


if __name__ == "__main__":
  app.run(main)
