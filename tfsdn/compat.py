"""The Keras that tfsdn builds on, and the check that callers use it too.

tfmot supports only Keras 2, which ships as the `tf_keras` package next to
TensorFlow 2.16+. Every model and layer handed to tfsdn must come from
`tf_keras`; a Keras 3 object is refused with a `TypeError` that says how to
fix it.
"""

import tf_keras as keras

from tfsdn import internals

KERAS3_HELP = (
    "tfsdn needs tf_keras (Keras 2) models and layers, because "
    "tensorflow-model-optimization does not support Keras 3. Build the model "
    "with `import tf_keras as keras`, or set the environment variable "
    "TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported so that "
    "`tf.keras` is tf_keras (pip install tf-keras). For a Keras 3 model "
    "use the Keras 3 path, tfsdn.keras3 (same method, any backend; it "
    "builds its own DenseNets, tfsdn.keras3.densenet, and cannot convert "
    "keras.applications models yet: convert the tf_keras.applications one "
    "with tfsdn.make_prunable and move it with "
    "tfsdn.keras3.from_tf_keras)."
)


def _is_keras3(obj):
  module = type(obj).__module__ or ""
  return module == "keras" or module.startswith("keras.")


def require_tf_keras_layer(obj, argument="model"):
  """Returns `obj` if it is a tf_keras layer or model, else raises `TypeError`.

  The error names `argument`; for a Keras 3 object it says how to fix it.
  """
  if isinstance(obj, keras.layers.Layer):
    return obj
  if _is_keras3(obj):
    raise TypeError(
        f"{argument} is a Keras 3 object ({type(obj).__module__}."
        f"{type(obj).__name__}). {KERAS3_HELP}")
  raise TypeError(
      f"{argument} must be a tf_keras Layer or Model. Received: "
      f"{argument}={obj!r} of type {type(obj).__name__}.")


def require_functional(model, argument="model"):
  """Returns `model` if it is a functional or Sequential tf_keras model.

  Raises:
    TypeError: naming `argument`, for Keras 3 objects, non-models and
      subclassed models.
  """
  require_tf_keras_layer(model, argument)
  if not isinstance(model, keras.Model):
    raise TypeError(
        f"{argument} must be a tf_keras Model. Received: a layer of type "
        f"{type(model).__name__} ({model.name!r}).")
  if not internals.is_graph_network(model):
    raise TypeError(
        "Only functional and Sequential tf_keras models can be rewritten; "
        f"{argument}={model.name!r} is a subclassed model of type "
        f"{type(model).__name__}.")
  return model
