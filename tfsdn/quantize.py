"""Quantization-aware training of a compact model with tfmot.

A compact model (`strip`'s result) is made of stock tf_keras layers, but
`tfmot.quantization.keras.quantize_model` cannot turn it into a model that
TFLite converts to int8:

- its channel slices are `SlicingOpLambda` layers, which tfmot does not
  support and cannot wrap (tensorflow/model-optimization#1139): wrapping
  one drops its slice arguments;
- tfmot quantizes a BatchNormalization only when a convolution precedes
  it, which is never the case in a pre-activation DenseNet, so TFLite keeps
  every BatchNormalization as a float multiply-add between a dequantize and
  a quantize;
- it gives an AveragePooling2D and the convolution before it output ranges
  of their own, which TFLite's int8 pooling rejects ("violate the same
  scale constraint"), in dense DenseNets as well.

`quantize_aware` therefore builds the QAT model itself, from tfmot's own
pieces: every BatchNormalization becomes the 1x1 DepthwiseConv2D that
computes it in inference mode (its moving statistics folded in, as QAT
fine-tuning freezes them anyway; tfmot quantizes a depthwise convolution
per channel), a convolution (or, after `strip(..., pool_first=True)`, a
ReLU) read only by pooling quantizes its weights but not its output (the
pooling's range is both), slices are left unwrapped (a
slice only moves int8 values, keeping its input's scale), and everything
else is wrapped as `quantize_model` would. Fine-tune the result with `fit`,
then convert it with `export_tflite(..., quantization="int8")`.
"""

import numpy as np
import tensorflow_model_optimization as tfmot

from tfsdn.compat import keras
from tfsdn.compat import require_functional

_Q = tfmot.quantization.keras


@keras.utils.register_keras_serializable(package="tfsdn")
class OutputQuantizeConfig(_Q.QuantizeConfig):
  """Quantizes only a layer's output (8 bits, moving-average range).

  For a Normalization input layer, whose weights TFLite folds into
  constants.
  """

  def get_weights_and_quantizers(self, layer):
    return []

  def get_activations_and_quantizers(self, layer):
    return []

  def set_quantize_weights(self, layer, quantize_weights):
    pass

  def set_quantize_activations(self, layer, quantize_activations):
    pass

  def get_output_quantizers(self, layer):
    return [_Q.quantizers.MovingAverageQuantizer(
        num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

  def get_config(self):
    return {}


@keras.utils.register_keras_serializable(package="tfsdn")
class WeightsOnlyQuantizeConfig(_Q.QuantizeConfig):
  """tfmot's default 8-bit weight quantization, without an output range.

  For a convolution or ReLU read only by a pooling layer, which must keep
  its input's scale in TFLite: the pooling's output range then sets both.
  """

  def _default(self, layer):
    return _Q.default_8bit.Default8BitQuantizeRegistry().get_quantize_config(
        layer)

  def get_weights_and_quantizers(self, layer):
    return self._default(layer).get_weights_and_quantizers(layer)

  def get_activations_and_quantizers(self, layer):
    return []

  def set_quantize_weights(self, layer, quantize_weights):
    self._default(layer).set_quantize_weights(layer, quantize_weights)

  def set_quantize_activations(self, layer, quantize_activations):
    pass

  def get_output_quantizers(self, layer):
    return []

  def get_config(self):
    return {}


_POOLING = (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D)


def _read_only_by_pooling(layer):
  consumers = [node.outbound_layer for node in layer.outbound_nodes]
  return bool(consumers) and all(isinstance(c, _POOLING) for c in consumers)


def _as_depthwise(batch_norm):
  """The 1x1 DepthwiseConv2D computing `batch_norm` in inference mode."""
  gamma, beta, mean, variance = _batch_norm_weights(batch_norm)
  scale = gamma / np.sqrt(variance + batch_norm.epsilon)
  depthwise = keras.layers.DepthwiseConv2D(
      1, use_bias=True, name=batch_norm.name, dtype=batch_norm.dtype_policy)
  depthwise.build(batch_norm.input_shape)
  depthwise.set_weights([scale.reshape(1, 1, -1, 1), beta - mean * scale])
  return depthwise


def _batch_norm_weights(batch_norm):
  channels = batch_norm.moving_mean.shape[0]
  gamma = (batch_norm.gamma.numpy() if batch_norm.scale
           else np.ones(channels, np.float32))
  beta = (batch_norm.beta.numpy() if batch_norm.center
          else np.zeros(channels, np.float32))
  return (gamma, beta, batch_norm.moving_mean.numpy(),
          batch_norm.moving_variance.numpy())


def fold_batch_norms(model):
  """A copy of `model` with every BatchNormalization as a 1x1 depthwise conv.

  Each BatchNormalization becomes the DepthwiseConv2D (kernel 1x1, bias)
  that computes it in inference mode, `gamma * (x - mean) /
  sqrt(variance + epsilon) + beta`, so the copy computes the same function
  in inference mode and trains with the statistics frozen. `quantize_aware`
  starts from this; fine-tuning this float copy with the same steps is the
  control that tells quantization-aware training from more training.

  Args:
    model: A functional tf_keras model over 4-D images. Its weights are
      copied, not shared.

  Returns:
    The new model, of stock tf_keras layers.

  Raises:
    TypeError: for Keras 3 or subclassed models.
  """
  require_functional(model)
  copies = []  # (original, its copy), to copy the weights once built

  def clone(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
      axis = list(layer.axis)
      if axis not in ([3], [-1]) or len(layer.input_shape) != 4:
        raise ValueError(
            f"Layer {layer.name!r} normalizes axis {axis} of inputs "
            f"of shape {layer.input_shape}; only the channel axis of 4-D "
            "inputs can be folded into a depthwise convolution.")
      return _as_depthwise(layer)
    copy = layer.__class__.from_config(layer.get_config())
    copies.append((layer, copy))
    return copy

  folded = keras.models.clone_model(model, clone_function=clone)
  for layer, copy in copies:
    copy.set_weights(layer.get_weights())
  return folded


def quantize_aware(model):
  """A quantization-aware copy of `model`, ready to fine-tune.

  Example:

  ```python
  compact = tfsdn.strip(pruned).model
  qat = tfsdn.quantize_aware(compact)
  qat.compile(optimizer, loss, metrics=["accuracy"])
  qat.fit(train, epochs=1)
  tfsdn.export_tflite(qat, "compact_qat.tflite", quantization="int8",
                      representative_images=images)
  ```

  Its activation ranges start at tfmot's defaults and are learned while it
  fine-tunes. Save it as HDF5 (`.h5`: tfmot's QuantizeLayer does not load
  back from the `.keras` format) and load it inside
  `tfmot.quantization.keras.quantize_scope()` after `import tfsdn`.

  Args:
    model: A functional tf_keras model of stock layers over 4-D images,
      usually a compact model from `tfsdn.strip`. Its weights are copied,
      not shared.

  Returns:
    The model `tfmot.quantization.keras.quantize_apply` builds from
    `fold_batch_norms(model)` annotated as this module's docstring says.

  Raises:
    TypeError: for Keras 3 or subclassed models.
    ValueError: if a layer with weights is neither supported by tfmot's
      default 8-bit scheme nor one of the layers handled here: it would
      silently stay float.
  """
  folded = fold_batch_norms(model)
  registry = _Q.default_8bit.Default8BitQuantizeRegistry()
  annotate = _Q.quantize_annotate_layer

  def clone(layer):
    if isinstance(layer, keras.layers.InputLayer):
      return layer.__class__.from_config(layer.get_config())
    if isinstance(layer, keras.layers.Normalization):
      return annotate(layer, OutputQuantizeConfig())
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.ReLU)) and (
        _read_only_by_pooling(layer)):
      return annotate(layer, WeightsOnlyQuantizeConfig())
    if registry.supports(layer):
      return annotate(layer)
    if layer.weights:
      raise ValueError(
          f"Layer {layer.name!r} ({type(layer).__name__}) has weights but "
          "tfmot's default 8-bit scheme does not support it, so it would "
          "stay float. Annotate it with "
          "tfmot.quantization.keras.quantize_annotate_layer and a "
          "QuantizeConfig.")
    return layer  # A slice: it keeps its input's int8 scale.

  # The folded copy is private, so its layers are wrapped, not copied.
  annotated = keras.models.clone_model(folded, clone_function=clone)
  with _Q.quantize_scope({"OutputQuantizeConfig": OutputQuantizeConfig,
                          "WeightsOnlyQuantizeConfig":
                              WeightsOnlyQuantizeConfig}):
    return _Q.quantize_apply(annotated)
