"""tfsdn.onnx_transpose: moving tf2onnx's transposes through Gather."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from onnx import helper  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfsdn import onnx_transpose  # pylint: disable=g-import-not-at-top,wrong-import-position

_SHAPE = (2, 5, 3, 4)  # NCHW
_TO_NHWC = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)


def _graph(axis, indices, back_to_nchw=True):
  """x (NCHW) -> Transpose to NHWC -> Gather(indices, axis) [-> to NCHW]."""
  nhwc = [_SHAPE[p] for p in _TO_NHWC]
  indices = np.asarray(indices, np.int64)
  gathered = (nhwc[:axis % 4] + list(indices.shape) + nhwc[axis % 4 + 1:])
  nodes = [
      helper.make_node("Transpose", ["x"], ["nhwc"], perm=_TO_NHWC),
      helper.make_node("Gather", ["nhwc", "indices"], ["gathered"],
                       axis=axis)]
  out, out_shape = "gathered", gathered
  if back_to_nchw:
    nodes.append(helper.make_node("Transpose", ["gathered"], ["y"],
                                  perm=_TO_NCHW))
    out, out_shape = "y", [gathered[p] for p in _TO_NCHW]
  graph = helper.make_graph(
      nodes, "g",
      [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, _SHAPE)],
      [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, out_shape)],
      initializer=[onnx.numpy_helper.from_array(indices, "indices")])
  return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(proto, x):
  session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                         providers=["CPUExecutionProvider"])
  return session.run(None, {"x": x})[0]


def _ops(proto):
  return [node.op_type for node in proto.graph.node]


@settings(max_examples=25, deadline=None)
@given(axis=st.integers(-4, 3), data=st.data())
def test_transposes_move_through_a_gather_and_cancel(axis, data):
  size = [_SHAPE[p] for p in _TO_NHWC][axis % 4]
  indices = data.draw(st.lists(st.integers(-size, size - 1), min_size=1,
                               max_size=7))
  proto = _graph(axis, indices)
  x = np.random.default_rng(0).normal(size=_SHAPE).astype(np.float32)
  optimized = onnx_transpose.optimize(proto)
  # The two Transposes cancel (tf2onnx turns one that moves only a size-1
  # axis, after a one-index gather, into a Reshape).
  assert "Transpose" not in _ops(optimized)
  (gather,) = [n for n in optimized.graph.node if n.op_type == "Gather"]
  (axis_attr,) = [a for a in gather.attribute if a.name == "axis"]
  assert axis_attr.i == _TO_NHWC[axis % 4]
  np.testing.assert_array_equal(_run(optimized, x), _run(proto, x))


def test_a_gather_with_matrix_indices_keeps_its_transposes():
  proto = _graph(3, [[0, 1], [3, 2]], back_to_nchw=False)
  x = np.random.default_rng(1).normal(size=_SHAPE).astype(np.float32)
  optimized = onnx_transpose.optimize(proto)
  assert "Transpose" in _ops(optimized)
  np.testing.assert_array_equal(_run(optimized, x), _run(proto, x))


def test_a_graph_without_such_a_gather_is_returned_as_is():
  proto = _graph(3, [0, 2])
  proto.graph.node[1].input[0] = "x"  # The Gather no longer reads a Transpose.
  assert onnx_transpose.optimize(proto) is proto
