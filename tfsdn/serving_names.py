"""What every export of both paths takes and returns, by name (no TensorFlow).

A classifier is exported with the same names in every format (SavedModel,
TFLite/LiteRT, ONNX) and from both paths: it takes `images` (float32 raw
pixels, [batch, H, W, C]) and returns

* a model that outputs logits: `logits` (its output) and `probabilities`
  (their softmax);
* a model that ends in a softmax: `probabilities` (its output) only, since
  its logits are gone (a log of probabilities is not its logits, and would
  be near -inf where a probability underflows).

The model's own output comes first (`output_names(...)[0]`), so a runtime
that reads outputs by position reads the same tensor as before.
"""

INPUT_NAME = "images"
LOGITS = "logits"
PROBABILITIES = "probabilities"
SIGNATURE = "serving_default"


def _producer(tensor):
  history = getattr(tensor, "_keras_history", None)
  if history is None:
    return None
  # tf_keras: (layer, node_index, tensor_index); Keras 3: (operation, ...).
  return history[0]


def ends_in_softmax(model):
  """Whether `model`'s (one) output is a softmax.

  True when the layer or operation that produces the output is a `Softmax`
  layer or op (`keras.layers.Softmax`, Keras 3's `keras.ops.softmax`,
  tf_keras' `tf.nn.softmax` op layer), or a layer whose `activation` is
  softmax (`Dense(..., activation="softmax")`, `Activation("softmax")`),
  also at the end of a nested model.

  Args:
    model: A functional model (tf_keras or Keras 3) with one output.

  Returns:
    A bool.

  Raises:
    ValueError: for a model with several outputs.
  """
  if len(model.outputs) != 1:
    raise ValueError(
        f"Model {model.name!r} must have exactly one output (logits or "
        f"probabilities); it has {len(model.outputs)}.")
  layer = _producer(model.outputs[0])
  while layer is not None and getattr(layer, "outputs", None) and (
      len(layer.outputs) == 1 and _producer(layer.outputs[0]) is not None
      and _producer(layer.outputs[0]) is not layer):
    layer = _producer(layer.outputs[0])  # The end of a nested model.
  if layer is None:
    return False
  activation = getattr(layer, "activation", None)
  return (type(layer).__name__ == "Softmax" or
          getattr(layer, "symbol", None) in ("nn.softmax", "math.softmax") or
          getattr(activation, "__name__", None) == "softmax")


def output_names(softmax):
  """The exported outputs: `(PROBABILITIES,)` if `softmax`, else both."""
  return (PROBABILITIES,) if softmax else (LOGITS, PROBABILITIES)


def rename_value(onnx_graph, old, new):
  """Renames value `old` to `new` in an ONNX graph, wherever it appears."""
  for value in list(onnx_graph.input) + list(onnx_graph.output):
    if value.name == old:
      value.name = new
  for node in onnx_graph.node:
    node.input[:] = [new if name == old else name for name in node.input]
    node.output[:] = [new if name == old else name for name in node.output]
