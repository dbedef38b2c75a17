"""tf2onnx's transpose optimizer, taught to move transposes through Gather.

tf2onnx converts a channels-last TensorFlow graph to channels-first ONNX by
wrapping every layout-sensitive op in Transposes, then pushes those through
the ops its transpose optimizer knows until pairs cancel. Gather is not
among them (tf2onnx 1.17), so a channel gather (`tf.gather(x, i, axis=-1)`,
tfsdn's `channel_reads="gather"`) keeps a Transpose on each side: 77 in a
DenseNet-40. The rule added here is exact for a one-dimensional constant
index: `Gather(Transpose(x, perm), i, axis=a)` equals
`Transpose(Gather(x, i, axis=perm[a]), perm)`.

Imports tf2onnx: import this module only where the `onnx` extra is needed.
"""

import collections

from tf2onnx import optimizer
from tf2onnx.graph import GraphUtil
from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer


class GatherTransposeOptimizer(TransposeOptimizer):
  """tf2onnx's `TransposeOptimizer` with a handler for Gather."""

  def _initialize_handlers(self):
    super()._initialize_handlers()
    self._handler_map["Gather"] = self._gather_handler

  def _gather_handler(self, trans, node):
    """Moves `trans` after `node` when `node` gathers from it on one axis."""
    if node.input[0] != trans.output[0] or not node.inputs[1].is_const():
      return False
    if node.inputs[1].get_tensor_value(as_list=False).ndim != 1:
      return False
    perm = trans.get_attr_value("perm")
    axis = node.get_attr_value("axis", 0) % len(perm)
    if not self._switch_transpose_and_node(node, trans):
      return False
    node.set_attr("axis", perm[axis])
    return True


def _gathers_after_transpose(proto):
  transposes = {output for node in proto.graph.node
                if node.op_type == "Transpose" for output in node.output}
  return any(node.op_type == "Gather" and node.input[0] in transposes
             for node in proto.graph.node)


def optimize(proto):
  """`proto` re-optimized by tf2onnx with `GatherTransposeOptimizer`.

  Returns `proto` itself when no Gather reads a Transpose (nothing to do).

  Args:
    proto: An `onnx.ModelProto` that tf2onnx made.

  Returns:
    An `onnx.ModelProto` computing the same function.
  """
  if not _gathers_after_transpose(proto):
    return proto
  optimizers = collections.OrderedDict(optimizer._get_optimizers())  # pylint: disable=protected-access
  optimizers["optimize_transpose"] = GatherTransposeOptimizer
  return GraphUtil.optimize_model_proto(proto, optimizers=optimizers)
