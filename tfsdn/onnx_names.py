"""Renaming ONNX graph inputs and outputs (no TensorFlow), for both paths."""


def rename_value(onnx_graph, old, new):
  """Renames value `old` to `new` in an ONNX graph, wherever it appears."""
  for value in list(onnx_graph.input) + list(onnx_graph.output):
    if value.name == old:
      value.name = new
  for node in onnx_graph.node:
    node.input[:] = [new if name == old else name for name in node.input]
    node.output[:] = [new if name == old else name for name in node.output]
