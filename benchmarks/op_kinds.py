"""Kinds of the ops TensorFlow executes, for `tf_op_profile.py` (no TF).

An executed op type (after grappler's and oneDNN's rewrites, say
`_MklNativeConv2D`) falls in one kind of `KINDS`, else "other".
"""

# Kinds of executed op types, tried in order: the first kind one of whose
# substrings the op type holds.
KINDS = (
    ("convolution", ("Conv2D", "MatMul")),
    ("channel reads", ("Slice", "Split", "Gather")),
    ("concatenation", ("Concat",)),
    ("batch norm and ReLU", ("BatchNorm", "Mul", "Add", "Sub", "Relu",
                             "Rsqrt")),
    ("pooling", ("Pool", "Mean")),
)


def kind_of(op_type):
  """The kind (`KINDS`, else "other") of an executed op type."""
  for kind, parts in KINDS:
    if any(part in op_type for part in parts):
      return kind
  return "other"


def op_type(node_stats):
  """The executed op type of a `NodeExecStats` (its timeline label's)."""
  # The label reads "name = OpType(inputs)"; an op without one is named.
  label = node_stats.timeline_label
  if " = " not in label:
    return node_stats.node_name
  return label.split(" = ", 1)[1].split("(", 1)[0].strip()


def by_kind(ms_by_op):
  """Sums ms by op type into ms by kind (every kind of `KINDS`, and other)."""
  kinds = {kind: 0.0 for kind, _ in KINDS}
  kinds["other"] = 0.0
  for op, ms in ms_by_op.items():
    kinds[kind_of(op)] += ms
  return kinds
