"""The check that a model handed to `tfsdn.keras3` is a Keras 3 model."""

import keras

TF_KERAS_HELP = (
    "tfsdn.keras3 works on Keras 3 models. A tf_keras (Keras 2) model goes "
    "through the tfmot path: the functions at the top level of tfsdn "
    "(tfsdn.prune_dense_connections, tfsdn.strip, ...); to move a trained "
    "tf_keras model to Keras 3, use tfsdn.keras3.from_tf_keras(model).")


def require_keras3_model(model, argument="model"):
  """Returns `model` if it is a functional Keras 3 model, else `TypeError`."""
  if isinstance(model, keras.Model):
    if not hasattr(model, "_nodes_by_depth"):
      raise TypeError(
          "Only functional and Sequential Keras 3 models can be rewritten; "
          f"{argument}={model.name!r} is a subclassed model of type "
          f"{type(model).__name__}.")
    return model
  module = type(model).__module__ or ""
  if module.startswith("tf_keras") or module.startswith("tensorflow"):
    raise TypeError(f"{argument} is a tf_keras object ({module}."
                    f"{type(model).__name__}). {TF_KERAS_HELP}")
  raise TypeError(f"{argument} must be a Keras 3 Model. Received: "
                  f"{argument}={model!r} of type {type(model).__name__}.")
