"""An int8 LiteRT model without requantizations, to measure what they cost.

In a full-integer TFLite model a CONCATENATION's inputs and output share one
scale and zero point. The converter calibrates each tensor on its own, so
where a tensor is read by a concatenation calibrated to another range,
directly or through slices, it inserts a QUANTIZE (int8 to int8) after the
tensor, and a compact DenseNet, whose layers concatenate their own pieces
of a block's feature maps, gets many: about 250 in the exact DenseNet-40
compact model (each read by the slices that feed one concatenation).

`share_scales` rewrites the flatbuffer so none is needed: it drops every
int8-to-int8 QUANTIZE, joins the tensors tied by ops that keep the scale
(CONCATENATION, and every op whose int8 operands had one scale and zero
point after conversion: slices, gathers, reshapes, pooling) into groups,
and gives each group the union of its members' ranges. In a DenseNet that
makes one group per dense block. A group that holds a tensor whose scale
cannot change (a constant, or the output of an op with a fixed output
range such as SOFTMAX or LOGISTIC) is refused with a `ValueError`. The function changes a little (a tensor
with a narrower range than its group's is quantized more coarsely), so
`deploy_speed.py` measures its accuracy next to its speed (runtime
`litert_int8_shared`). This is a benchmark tool, not part of tfsdn's export:
it shows what requantization costs, and the answer decides whether an
export option is worth having.
"""

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

_OP_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
_TYPE_NAMES = {code: name for name, code in vars(schema.TensorType).items()
               if not name.startswith("_")}
# int8 kernels whose output scale and zero point are fixed by the op.
_FIXED_OUTPUT_RANGE = ("SOFTMAX", "LOG_SOFTMAX", "LOGISTIC", "TANH")


def _op_name(model, op):
  code = model.operatorCodes[op.opcodeIndex]
  return _OP_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)]


class _Graph:
  """The int8 activation tensors of one subgraph and their parameters."""

  def __init__(self, model, graph):
    self.model, self.graph = model, graph

  def is_int8(self, index):
    """An int8 tensor with one scale (an activation or a constant)."""
    if index < 0:
      return False
    tensor = self.graph.tensors[index]
    quantization = tensor.quantization
    return (tensor.type == schema.TensorType.INT8 and
            quantization is not None and quantization.scale is not None and
            len(quantization.scale) == 1)

  def is_constant(self, index):
    data = self.model.buffers[self.graph.tensors[index].buffer].data
    return data is not None and len(data) > 0

  def is_activation(self, index):
    """An int8 tensor with one scale that holds no constant data."""
    return self.is_int8(index) and not self.is_constant(index)

  def params(self, index):
    quantization = self.graph.tensors[index].quantization
    return float(quantization.scale[0]), int(quantization.zeroPoint[0])

  def operands(self, op):
    """The op's int8 inputs and outputs, constants included."""
    return [int(i) for i in list(op.inputs) + list(op.outputs)
            if self.is_int8(int(i))]

  def pinned(self):
    """{tensor: why} for tensors whose scale may not change."""
    why = {}
    for op in self.graph.operators:
      if _op_name(self.model, op) in _FIXED_OUTPUT_RANGE:
        for index in op.outputs:
          why[int(index)] = f"the output of {_op_name(self.model, op)}"
      for index in self.operands(op):
        if self.is_constant(index):
          why[index] = "a constant"
    return why

  def requantizes(self, op):
    return (_op_name(self.model, op) == "QUANTIZE" and
            self.is_activation(int(op.inputs[0])) and
            self.is_activation(int(op.outputs[0])))

  def keeps_scale(self, op):
    """CONCATENATION, or an op whose int8 operands have one scale."""
    operands = self.operands(op)
    return len(operands) > 1 and (
        _op_name(self.model, op) == "CONCATENATION" or
        len({self.params(i) for i in operands}) == 1)


def _union_range(params):
  """(scale, zero point) of int8 covering every (scale, zero point)."""
  low = min((-128 - zero) * scale for scale, zero in params)
  high = max((127 - zero) * scale for scale, zero in params)
  scale = (high - low) / 255.0
  return scale, int(np.clip(round(-128 - low / scale), -128, 127))


def share_scales(flatbuffer):
  """`flatbuffer` (a full-integer .tflite) without int8 requantizations.

  Args:
    flatbuffer: The bytes of a TFLite model converted with int8 activations.

  Returns:
    `(bytes, stats)`: the rewritten model, and a dict with the
    `requantizations_removed`, the `groups` given one scale and the
    `tensors_changed`.

  Raises:
    ValueError: if the model has no int8 activations, or if a group of
      tied tensors holds one whose scale is fixed (a constant, or the
      output of SOFTMAX, LOG_SOFTMAX, LOGISTIC or TANH).
  """
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
  stats = {"requantizations_removed": 0, "groups": 0, "tensors_changed": 0}
  int8 = False
  for number, subgraph in enumerate(model.subgraphs):
    graph = _Graph(model, subgraph)
    int8 = int8 or any(graph.is_activation(i)
                       for i in range(len(subgraph.tensors)))
    # Which ops tie their operands is read before any is rewired: a
    # slice read through a QUANTIZE had its output's scale, not its
    # producer's.
    kept, rename = [], {}
    for op in subgraph.operators:
      if graph.requantizes(op):
        source = int(op.inputs[0])
        rename[int(op.outputs[0])] = rename.get(source, source)
      else:
        kept.append(op)
    tied = [graph.keeps_scale(op) for op in kept]
    stats["requantizations_removed"] += len(rename)
    for op in kept:
      op.inputs = np.array([rename.get(int(i), int(i)) for i in op.inputs],
                           np.int32)
    subgraph.outputs = np.array(
        [rename.get(int(i), int(i)) for i in subgraph.outputs], np.int32)
    for signature in model.signatureDefs or []:
      if signature.subgraphIndex == number:
        for output in signature.outputs or []:
          output.tensorIndex = rename.get(output.tensorIndex,
                                          output.tensorIndex)
    subgraph.operators = kept
    pinned = graph.pinned()
    parent = list(range(len(subgraph.tensors)))

    def root(index):
      while parent[index] != index:
        parent[index] = parent[parent[index]]
        index = parent[index]
      return index

    for op, ties in zip(kept, tied):
      operands = graph.operands(op)
      for index in operands[1:] if ties else []:
        parent[root(index)] = root(operands[0])
    groups = {}
    for index in range(len(subgraph.tensors)):
      if graph.is_int8(index):
        groups.setdefault(root(index), []).append(index)
    for members in groups.values():
      params = {graph.params(i) for i in members}
      if len(params) == 1:
        continue
      fixed = [i for i in members if i in pinned]
      if fixed:
        name = subgraph.tensors[fixed[0]].name
        if isinstance(name, bytes):
          name = name.decode(errors="replace")
        raise ValueError(
            "share_scales cannot give one scale to the tensors tied to "
            f"{name!r} ({pinned[fixed[0]]}, whose scale is fixed); keep "
            "this model's requantizations.")
      scale, zero = _union_range(params)
      for index in members:
        stats["tensors_changed"] += graph.params(index) != (scale, zero)
        quantization = subgraph.tensors[index].quantization
        quantization.scale = np.array([scale], np.float32)
        quantization.zeroPoint = np.array([zero], np.int64)
      stats["groups"] += 1
  if not int8:
    types = sorted({_TYPE_NAMES.get(t.type, str(t.type))
                    for g in model.subgraphs for t in g.tensors})
    raise ValueError(
        "share_scales needs a full-integer (int8) TFLite model; this one "
        f"has no int8 activation tensors. Received tensor types: {types}")
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), stats


def requantizations(flatbuffer):
  """How many int8-to-int8 QUANTIZE ops the model has."""
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
  return sum(_Graph(model, g).requantizes(op)
             for g in model.subgraphs for op in g.operators)


def unshared_concatenations(flatbuffer):
  """CONCATENATIONs whose int8 operands do not all share one scale."""
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
  count = 0
  for subgraph in model.subgraphs:
    graph = _Graph(model, subgraph)
    for op in subgraph.operators:
      if _op_name(model, op) == "CONCATENATION":
        count += len({graph.params(i) for i in graph.operands(op)}) > 1
  return count
