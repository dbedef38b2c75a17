r"""Where the time goes: per-op-type times of dense and compact models.

The pruned model and the same network with every channel live are
stripped: the dense one
with the default options (`dense_default`), the pruned one with the
default options (`default`) and with each --slice_cost_macs. Each is frozen
into one graph and run in a TensorFlow session at --batch_size, first
untraced (--runs runs: the wall time per batch), then traced --traced_runs
times (`RunOptions.FULL_TRACE`): the time of every op, summed per op type
and averaged over the traced runs. The JSON has, per model, the wall time,
the MACs and each op type's milliseconds and count: what bounds a runtime
where per-op costs dominate (e.g. a DenseNet-40 at batch 1, whose 3x3
convolutions take about as long on a third of the input channels).

Op times of a trace overlap where ops run in parallel (inter-op threads),
so their sum can exceed the wall time; --inter_op_threads=1 runs one op at
a time.

With --runtime=onnx each model is exported with `tfsdn.export_onnx` (the
dense and the default strips are laid out again for `Target("onnx",
batch)`, as that export does; the compact_sCOST ones, laid out on purpose,
go as they are) and run in ONNX Runtime with --threads intra-op threads:
the wall time untraced, then --traced_runs runs with ONNX Runtime's own
profiler on, whose node events (the kernels after ONNX Runtime's graph
rewrites: fused convolutions, its NCHWc layout and the reorders into and
out of it) are summed per op type.

  python benchmarks/op_profile.py --pruned_model=RUN40/final_model.keras \
      --batch_size=1 --slice_cost_macs=0 --output=docs/op_profile_d40_b1.json
  python benchmarks/op_profile.py --pruned_model=RUN40/final_model.keras \
      --runtime=onnx --batch_size=32 --slice_cost_macs=0 \
      --output=docs/op_profile_onnx_d40_b32.json
"""

import collections
import json
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-direct-tensorflow-import

import tfsdn
from tfsdn.compat import keras
from tfsdn.export import compact_for
from tfsdn.files import write_json
import runtime_timing

FLAGS = flags.FLAGS
RUNTIMES = ("tensorflow", "onnx")

def _define_flags():
  """Defines the flags; only when run as a script, so that importing this
  module (a test does) defines none that another benchmark also defines."""
  flags.DEFINE_string("pruned_model", None, "A pruned model's .keras file.")
  flags.DEFINE_enum("runtime", "tensorflow", RUNTIMES,
                    "Where the models run: a TensorFlow session of the "
                    "frozen graph, or ONNX Runtime (CPU) after export_onnx.")
  flags.DEFINE_integer("threads", 2, "ONNX Runtime intra-op threads.",
                       lower_bound=1)
  flags.DEFINE_integer("batch_size", 1, "Batch size.", lower_bound=1)
  flags.DEFINE_list("slice_cost_macs", [],
                    "Also profile the pruned model stripped with each of these "
                    "slice costs (named compact_sCOST; 0: exact reads).")
  flags.DEFINE_integer("runs", 200, "Untraced runs timed.", lower_bound=1)
  flags.DEFINE_integer("traced_runs", 20, "Traced runs averaged.",
                       lower_bound=1)
  flags.DEFINE_integer("inter_op_threads", 0,
                       "Session inter-op threads (0: TensorFlow's choice).",
                       lower_bound=0)
  flags.DEFINE_integer("top", 8, "Op types printed per model.", lower_bound=1)
  flags.DEFINE_string("output", None, "The JSON file to write.")
  flags.mark_flags_as_required(["pruned_model", "output"])


def _frozen_graph(model, batch_size):
  """(graph, input name, output name) of `model` with its weights constant."""
  shape = [batch_size] + [int(d) for d in model.inputs[0].shape[1:]]
  function = tf.function(lambda images: model(images, training=False))
  frozen = convert_to_constants.convert_variables_to_constants_v2(
      function.get_concrete_function(tf.TensorSpec(shape, tf.float32)))
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
  return graph, frozen.inputs[0].name, frozen.outputs[0].name


def _op_type(node, op_types):
  """The kernel a traced node ran (e.g. `_MklNativeConv2D`), as it says."""
  # A timeline label reads "name = Kernel(inputs)"; grappler's rewritten
  # nodes are not in the imported graph.
  _, equals, kernel = node.timeline_label.partition(" = ")
  if equals and "(" in kernel:
    return kernel.split("(")[0]
  return op_types.get(node.node_name, node.node_name)


def profile(model, batch_size, runs, traced_runs, inter_op_threads=0):
  """Wall ms per batch and {op type: (ms per batch, count)} of `model`."""
  graph, inputs, outputs = _frozen_graph(model, batch_size)
  shape = [batch_size] + [int(d) for d in model.inputs[0].shape[1:]]
  images = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
  config = tf.compat.v1.ConfigProto(
      inter_op_parallelism_threads=inter_op_threads)
  op_types = {op.name: op.type for op in graph.get_operations()}
  seconds, counts = collections.Counter(), collections.Counter()
  with tf.compat.v1.Session(graph=graph, config=config) as session:
    for _ in range(10):
      session.run(outputs, {inputs: images})
    start = time.perf_counter()
    for _ in range(runs):
      session.run(outputs, {inputs: images})
    wall_ms = (time.perf_counter() - start) / runs * 1e3
    options = tf.compat.v1.RunOptions(
        trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    for _ in range(traced_runs):
      metadata = tf.compat.v1.RunMetadata()
      session.run(outputs, {inputs: images}, options=options,
                  run_metadata=metadata)
      for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
          op_type = _op_type(node, op_types)
          seconds[op_type] += node.op_end_rel_micros / 1e6
          counts[op_type] += 1
  ops = {op_type: (seconds[op_type] / traced_runs * 1e3,
                   counts[op_type] // traced_runs)
         for op_type, _ in seconds.most_common()}
  return wall_ms, ops


def _onnx_events(trace, warmup):
  """The kernel events of a profile's runs after the first `warmup`."""
  runs = sorted((e for e in trace
                 if e.get("cat") == "Session" and e["name"] == "model_run"),
                key=lambda e: e["ts"])
  start = runs[warmup]["ts"]
  return [e for e in trace
          if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
          and e["ts"] >= start]


def profile_onnx(model, batch_size, runs, traced_runs, threads=2):
  """`profile` in ONNX Runtime: `model` exported with `tfsdn.export_onnx`.

  Returns:
    (wall ms per batch, {op type: (ms per batch, count)}, MACs per image of
    the model exported), the op types as ONNX Runtime's profiler names the
    kernels it ran (after its own fusions and layout changes).
  """
  exported = compact_for(model, tfsdn.Target("onnx", batch_size))
  macs = tfsdn.model_report(exported).total_macs
  shape = [batch_size] + [int(d) for d in model.inputs[0].shape[1:]]
  images = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
  warmup = 10
  with tempfile.TemporaryDirectory() as work:
    path = tfsdn.export_onnx(exported, os.path.join(work, "model.onnx"),
                             batch_size=batch_size)
    session = runtime_timing.onnx_session(path, threads)
    name = session.get_inputs()[0].name
    for _ in range(warmup):
      session.run(None, {name: images})
    start = time.perf_counter()
    for _ in range(runs):
      session.run(None, {name: images})
    wall_ms = (time.perf_counter() - start) / runs * 1e3
    session = runtime_timing.onnx_session(
        path, threads, profile_prefix=os.path.join(work, "profile"))
    for _ in range(warmup + traced_runs):
      session.run(None, {name: images})
    with open(session.end_profiling(), encoding="utf-8") as f:
      events = _onnx_events(json.load(f), warmup)
  seconds, counts = collections.Counter(), collections.Counter()
  for event in events:
    op_type = event["args"]["op_name"]
    seconds[op_type] += event["dur"] / 1e6
    counts[op_type] += 1
  ops = {op_type: (seconds[op_type] / traced_runs * 1e3,
                   counts[op_type] // traced_runs)
         for op_type, _ in seconds.most_common()}
  return wall_ms, ops, macs


def main(argv):
  del argv  # Unused.
  try:
    costs = sorted({int(cost) for cost in FLAGS.slice_cost_macs})
  except ValueError:
    costs = [-1]
  if costs and costs[0] < 0:
    raise app.UsageError(f"--slice_cost_macs takes whole numbers of MACs "
                         f">= 0. Received: {','.join(FLAGS.slice_cost_macs)}")
  pruned = keras.models.load_model(FLAGS.pruned_model)
  dense = keras.models.load_model(FLAGS.pruned_model)
  for layer in tfsdn.prunable_layers(dense):
    layer.contribution_score.assign(np.ones(layer.input_channels, "float32"))
  models = {"dense_default": tfsdn.strip(dense).model,
            "default": tfsdn.strip(pruned).model}
  for cost in costs:
    models[f"compact_s{cost}"] = tfsdn.strip(
        pruned, slice_cost_macs=cost).model
  results = {"pruned_model": FLAGS.pruned_model, "batch_size": FLAGS.batch_size,
             "runtime": FLAGS.runtime,
             "threads": FLAGS.threads if FLAGS.runtime == "onnx" else None,
             "inter_op_threads": FLAGS.inter_op_threads,
             "traced_runs": FLAGS.traced_runs, "runs": FLAGS.runs,
             "load_average": [round(x, 2) for x in os.getloadavg()],
             "models": {}}
  for name, model in models.items():
    if FLAGS.runtime == "onnx":
      wall_ms, ops, macs = profile_onnx(model, FLAGS.batch_size, FLAGS.runs,
                                        FLAGS.traced_runs, FLAGS.threads)
    else:
      wall_ms, ops = profile(model, FLAGS.batch_size, FLAGS.runs,
                             FLAGS.traced_runs, FLAGS.inter_op_threads)
      macs = tfsdn.model_report(model).total_macs
    results["models"][name] = {
        "wall_ms_per_batch": wall_ms,
        "macs": macs,
        "ops": {op: {"ms": ms, "count": count}
                for op, (ms, count) in ops.items()}}
    print(f"{name}: {wall_ms:.2f} ms per batch of {FLAGS.batch_size}, "
          f"{results['models'][name]['macs']:,} MACs per image")
    for op, (ms, count) in list(ops.items())[:FLAGS.top]:
      print(f"  {op:32s} {ms:7.3f} ms  x{count}")
  write_json(FLAGS.output, results)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
