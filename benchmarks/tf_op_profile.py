r"""Where a SavedModel's time goes in TensorFlow plain, dense against compact.

Strips a pruned DenseNet and the same network with every channel live
(`pruned_models.pruned_and_dense`; both with the same --reuse_concats,
--fused_batch_norm and --pool_first), exports both with
`tfsdn.export_saved_model`, loads each in a TF1 session as TF Serving does
(`tf.compat.v1.saved_model.loader.load`, the `serving_default` signature),
and traces --traces batches of --batch_size each (`RunOptions.FULL_TRACE`):
the time of every executed op (after grappler and the oneDNN rewrites),
summed by op type and by kind (convolution, channel reads, concatenation,
batch norm and ReLU, pooling, other). Ops run in parallel, so the sum can
exceed the wall time, which is timed separately without tracing.

The compact/dense ratio of each kind against the ideal (the MAC ratio)
says how far each part of the graph scales with the MACs pruned: the
`convolution` ratio is the most the model could reach if every other op
were free.

  python benchmarks/tf_op_profile.py --pruned_model=RUN/final_model.keras \
      --reuse_concats --nofused_batch_norm --output=docs/tf_op_profile.json
"""

import atexit
import collections
import os
import shutil
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import tfsdn
from tfsdn.files import write_json
from op_kinds import by_kind
from op_kinds import op_type
import pruned_models

FLAGS = flags.FLAGS
pruned_models.define_flags()
flags.DEFINE_integer("seed", 0, "Seed of the random pattern and images.")
flags.DEFINE_integer("batch_size", 64, "Images per traced batch.",
                     lower_bound=1)
flags.DEFINE_integer("traces", 3, "Traced batches per model (averaged).",
                     lower_bound=1)
flags.DEFINE_integer("timed", 10, "Untraced batches timed per model.",
                     lower_bound=1)
flags.DEFINE_integer("slice_cost_macs", 0,
                     "`tfsdn.strip(..., slice_cost_macs=)` of the compact "
                     "model.", lower_bound=0)
pruned_models.define_strip_flags()
flags.adopt_module_key_flags(pruned_models)  # In --help.
flags.DEFINE_string("output", "docs/tf_op_profile.json", "JSON results.")


def profile(path, images, traces, timed):
  """Op times (ms per batch, by op type), op counts and wall ms of a SavedModel.

  Args:
    path: A SavedModel of `tfsdn.export_saved_model` (`serving_default`
      takes `images` and returns `logits` and `probabilities`).
    images: The batch to run.
    traces: Traced runs averaged.
    timed: Untraced runs timed for the wall time.

  Returns:
    (ms by op type, executed ops by op type, wall ms per batch).
  """
  graph = tf.Graph()
  with tf.compat.v1.Session(graph=graph) as session:
    meta = tf.compat.v1.saved_model.loader.load(
        session, [tf.saved_model.SERVING], path)
    signature = meta.signature_def["serving_default"]
    feed = {signature.inputs["images"].name: images}
    output = signature.outputs["probabilities"].name
    for _ in range(3):
      session.run(output, feed)
    start = time.perf_counter()
    for _ in range(timed):
      session.run(output, feed)
    wall_ms = (time.perf_counter() - start) / timed * 1e3
    micros, counts = collections.Counter(), collections.Counter()
    options = tf.compat.v1.RunOptions(
        trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    for _ in range(traces):
      metadata = tf.compat.v1.RunMetadata()
      session.run(output, feed, options=options,
                  run_metadata=metadata)
      for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
          if node.node_name.startswith("_SOURCE"):
            continue
          executed = op_type(node)
          micros[executed] += node.op_end_rel_micros - node.op_start_rel_micros
          counts[executed] += 1
  return ({op: us / traces / 1e3 for op, us in micros.items()},
          {op: n // traces for op, n in counts.items()}, wall_ms)


def main(argv):
  del argv
  pruned, dense_source, patterns = pruned_models.from_flags()
  options = pruned_models.strip_options()
  stripped = {
      "dense": tfsdn.strip(dense_source, **options),
      "compact": tfsdn.strip(pruned, slice_cost_macs=FLAGS.slice_cost_macs,
                             **options)}
  macs = {name: tfsdn.model_report(s).total_macs
          for name, s in stripped.items()}
  ideal = macs["dense"] / macs["compact"]
  images = np.random.default_rng(FLAGS.seed).uniform(
      0, 255, (FLAGS.batch_size, 32, 32, 3)).astype("float32")
  workdir = tempfile.mkdtemp(prefix="tfsdn-op-profile-")
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)  # Exports.
  ms, counts, wall, kinds = {}, {}, {}, {}
  for name, s in stripped.items():
    path = tfsdn.export_saved_model(s.model, os.path.join(workdir, name))
    ms[name], counts[name], wall[name] = profile(
        path, images, FLAGS.traces, FLAGS.timed)
    kinds[name] = by_kind(ms[name])
    logging.info("profiled %s: %.1f ms per batch", name, wall[name])

  def ratio(dense_ms, compact_ms):
    return dense_ms / compact_ms if compact_ms > 0 else None

  kind_ratio = {kind: ratio(kinds["dense"][kind], kinds["compact"][kind])
                for kind in kinds["dense"]}
  results = {
      "patterns": patterns, "batch_size": FLAGS.batch_size,
      "traces": FLAGS.traces, "timed": FLAGS.timed,
      "strip_options": dict(options, slice_cost_macs=FLAGS.slice_cost_macs),
      "tensorflow": tf.__version__, "cpus": os.cpu_count(),
      "macs": macs, "ideal": ideal,
      "wall_ms": wall, "wall_ratio": wall["dense"] / wall["compact"],
      "ms_by_op": ms, "ops_by_type": counts,
      "ms_by_kind": kinds, "ratio_by_kind": kind_ratio,
      "fraction_of_ideal_by_kind": {
          kind: None if r is None else r / ideal
          for kind, r in kind_ratio.items()},
  }
  lines = [f"batch {FLAGS.batch_size}, {patterns}; ideal (MAC ratio) "
           f"{ideal:.2f}x; wall ms per batch: dense {wall['dense']:.1f}, "
           f"compact {wall['compact']:.1f} ({results['wall_ratio']:.2f}x, "
           f"{results['wall_ratio'] / ideal:.2f} of ideal)", "",
           "| kind | dense ms | compact ms | dense / compact | of ideal |",
           "| --- | ---: | ---: | ---: | ---: |"]
  for kind in kinds["dense"]:
    r = kind_ratio[kind]
    lines.append(
        f"| {kind} | {kinds['dense'][kind]:.1f} | "
        f"{kinds['compact'][kind]:.1f} | "
        + ("- | - |" if r is None else f"{r:.2f}x | {r / ideal:.2f} |"))
  lines += ["", "| op type | dense ms (ops) | compact ms (ops) |",
            "| --- | ---: | ---: |"]
  for op in sorted(set(ms["dense"]) | set(ms["compact"]),
                   key=lambda o: -max(ms["dense"].get(o, 0),
                                      ms["compact"].get(o, 0))):
    lines.append(" | ".join(
        [f"| {op}"] + [f"{ms[m].get(op, 0.0):.2f} ({counts[m].get(op, 0)})"
                       for m in ("dense", "compact")]) + " |")
  print("\n".join(lines))
  write_json(FLAGS.output, results)
  logging.info("Wrote %s", FLAGS.output)


if __name__ == "__main__":
  app.run(main)
