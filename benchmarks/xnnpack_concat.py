r"""How many XNNPACK partitions a concatenation of N channel slices makes.

A compact layer reads slices of its producers and concatenates them; the
LiteRT XNNPACK delegate takes a CONCATENATION only up to some number of
inputs, and an op it does not take splits the graph into more delegate
partitions. This converts `relu(concat(N slices of x))` for each N and
prints the number of DELEGATE nodes LiteRT makes (1: all delegated).

  python benchmarks/xnnpack_concat.py --inputs=2,3,4,5,6,8,20 \
      --output=docs/xnnpack_concat.json
"""

import collections

from absl import app
from absl import flags
import tensorflow as tf

from tfsdn.files import write_json

FLAGS = flags.FLAGS
flags.DEFINE_list("inputs", ["2", "3", "4", "5", "6", "8", "20"],
                  "Numbers of concatenated slices to try (>= 2).")
flags.DEFINE_string("output", None, "Optional JSON of the counts.")


def partitions(count):
  """`(DELEGATE nodes, CONCATENATION nodes)` for `count` slices."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top

  @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 4 * count])])
  def graph(x):
    return tf.nn.relu(tf.concat([x[..., 4 * i:4 * i + 2]
                                 for i in range(count)], axis=-1))

  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [graph.get_concrete_function()], graph)
  interpreter = Interpreter(model_content=converter.convert(), num_threads=2)
  interpreter.allocate_tensors()
  ops = collections.Counter(
      op["op_name"] for op in interpreter._get_ops_details())  # pylint: disable=protected-access
  return ops["DELEGATE"], ops["CONCATENATION"]


def main(argv):
  del argv
  counts = [int(n) for n in FLAGS.inputs]
  if min(counts) < 2:
    raise app.UsageError(f"--inputs must be >= 2. Received: {FLAGS.inputs}")
  results = {}
  for count in counts:
    delegates, _ = partitions(count)
    results[count] = delegates
    print(f"concat of {count} slices: {delegates} delegate partition(s)")
  if FLAGS.output:
    write_json(FLAGS.output, {"delegate_partitions": results})


if __name__ == "__main__":
  app.run(main)
