"""`PrunableConcatConv` for Keras 3: concat -> BN -> ReLU -> mask -> conv.

The same layer as `tfsdn.PrunableConcatConv`, written with `keras.ops` only,
so it runs on every Keras 3 backend. The scores have the same meaning (one
float32 per input channel; live iff > 0, pruned iff exactly 0) and are
computed by the same criteria (`tfsdn.common.scores`, numpy, once before a stage).
What differs from the tfmot layer: no tfmot wrapper holds a mask, so
`tfsdn.keras3.Pruning` zeroes the pruned scores itself (`prune_to`), and
there is no `bn_synchronized` (Keras 3's BatchNormalization synchronises
only on the TensorFlow backend).
"""

import keras
from keras import ops
import numpy as np

from tfsdn.common import checks
from tfsdn.common import scores as scores_lib
from tfsdn.common.scores import CRITERIA


def _shapes(input_shape):
  if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(
      input_shape[0], (list, tuple)):
    return [tuple(s) for s in input_shape]
  return [tuple(input_shape)]


@keras.saving.register_keras_serializable(package="tfsdn.keras3")
class PrunableConcatConv(keras.layers.Layer):
  """A DenseNet conv whose concatenated input channels can be pruned.

  Concatenates its inputs on the channel axis, applies BatchNormalization
  and ReLU, multiplies every input channel by its mask (1 if its
  contribution score is > 0, else 0) and convolves without bias. With the
  `"expected_l1"` criterion it keeps, in training, a moving average of
  E[|x_i|] per input channel (`input_abs_mean`); a non-finite batch leaves
  it unchanged. `update_scores()` turns the statistics into scores and
  `prune_to(n)` prunes the lowest-scoring live channels until `n` are
  pruned; `tfsdn.keras3.Pruning` calls both at each stage.

  Example:

  ```python
  new_maps = tfsdn.keras3.PrunableConcatConv(12, 3, name="block1_layer3")(
      [stem, layer1_out, layer2_out])
  ```

  Args:
    filters: Number of output channels.
    kernel_size: Conv kernel size, an int or a pair.
    strides: Conv strides, an int or a pair.
    padding: `"same"` or `"valid"`.
    kernel_initializer: Initializer of the conv kernel.
    kernel_regularizer: Regularizer of the conv kernel.
    criterion: `"expected_l1"` (default), `"weight_l1"`, `"bn_gamma"` or
      `"random"` (fixed random scores, the control arm).
    score_momentum: Momentum of the E[|x_i|] moving average, in [0, 1).
    group_lasso: Strength of the group-lasso loss
      lambda * sum_i ||W[:, :, i, :]||_2; 0 disables it.
    bn_momentum: Momentum of the BatchNormalization moving statistics.
    bn_epsilon: Epsilon of the BatchNormalization.
    batch_norm_trainable: False freezes the BatchNormalization.
    conv_trainable: False freezes the conv kernel.
    **kwargs: Standard Keras layer arguments (`name`, `dtype`, ...).
  """

  def __init__(self,
               filters,
               kernel_size=3,
               strides=1,
               padding="same",
               kernel_initializer="he_normal",
               kernel_regularizer=None,
               criterion="expected_l1",
               score_momentum=0.9,
               group_lasso=0.0,
               bn_momentum=0.99,
               bn_epsilon=1.001e-5,
               batch_norm_trainable=True,
               conv_trainable=True,
               **kwargs):
    super().__init__(**kwargs)
    arguments = checks.concat_conv_arguments(
        filters, kernel_size, strides, padding, criterion, score_momentum,
        group_lasso, bn_momentum, bn_epsilon, CRITERIA)
    for name, value in arguments.items():
      setattr(self, name, value)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    self.batch_norm = keras.layers.BatchNormalization(
        momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="bn",
        dtype=self.dtype_policy)
    self.batch_norm.trainable = bool(batch_norm_trainable)
    self.conv = keras.layers.Conv2D(
        self.filters, self.kernel_size, strides=self.strides,
        padding=self.padding, use_bias=False,
        kernel_initializer=self.kernel_initializer,
        kernel_regularizer=self.kernel_regularizer, name="conv",
        dtype=self.dtype_policy)
    self.conv.trainable = bool(conv_trainable)

  def build(self, input_shape):
    shapes = _shapes(input_shape)
    self.input_channel_counts = checks.concat_input_shapes(self.name, shapes)
    channels = sum(self.input_channel_counts)
    concat_shape = tuple(shapes[0][:-1]) + (channels,)
    self.conv_output_shape = tuple(self.conv.compute_output_shape(concat_shape))
    self.batch_norm.build(concat_shape)
    self.conv.build(concat_shape)
    self.contribution_score = self.add_weight(
        shape=(channels,), name="contribution_score", dtype="float32",
        initializer=(keras.initializers.RandomUniform(0.05, 1.0)
                     if self.criterion == "random" else "ones"),
        trainable=False, autocast=False)
    self.input_abs_mean = self.add_weight(
        shape=(channels,), name="input_abs_mean", dtype="float32",
        initializer="zeros", trainable=False, autocast=False,
        aggregation="mean")
    # 1.0 while later stages need the statistics; 0 after the last stage.
    self.measuring = self.add_weight(
        shape=(), name="measuring", dtype="float32", initializer="ones",
        trainable=False, autocast=False)

  @property
  def input_channels(self):
    """Total number of input channels (after concatenation)."""
    return int(self.contribution_score.shape[0])

  def live_mask(self):
    """A boolean numpy vector: True for live input channels.

    Raises:
      ValueError: if a score is negative or not finite (only a hand-set one
        can be), since such a channel is neither live nor pruned.
    """
    values = np.asarray(self.contribution_score.numpy())
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if len(bad):
      raise ValueError(
          f"Layer {self.name!r} has invalid contribution scores at input "
          f"channels {bad[:8].tolist()}: {values[bad[:8]].tolist()}. Scores "
          "must be finite and >= 0 (0 marks a pruned channel).")
    return values > 0

  def live_channels(self):
    """Indices of the live input channels, ascending."""
    return np.flatnonzero(self.live_mask())

  def pruned_channels(self):
    """Indices of the pruned input channels, ascending."""
    return np.flatnonzero(~self.live_mask())

  def sparsity(self):
    """The fraction of input channels that are pruned."""
    return float(np.mean(~self.live_mask()))

  def raw_scores(self):
    """The criterion's raw score per input channel, a numpy vector."""
    if self.criterion == "random":
      return np.asarray(self.contribution_score.numpy())
    return scores_lib.raw_scores(
        self.criterion, self.input_abs_mean.numpy(), self.conv.kernel.numpy(),
        self.batch_norm.gamma.numpy())

  def update_scores(self):
    """Recomputes the live scores (normalised, distinct); pruned stay 0.

    Returns:
      True if updated; False if the raw scores were not finite (diverged
      weights), leaving the scores as they were.
    """
    raw = self.raw_scores()
    if not np.all(np.isfinite(raw)):
      return False
    live = self.live_mask()
    if self.criterion == "random":
      new = scores_lib.break_ties(raw, live)
    else:
      new = scores_lib.break_ties(scores_lib.normalize_scores(raw, live), live,
                                  order=raw)
    self.contribution_score.assign(new)
    return True

  def prune_to(self, pruned):
    """Prunes the lowest-scoring live channels until `pruned` are pruned."""
    self.contribution_score.assign(scores_lib.prune_lowest(
        self.contribution_score.numpy(), pruned))

  def call(self, inputs, training=None):
    inputs = [ops.cast(t, self.compute_dtype) for t in (
        inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    # Sizes unknown when built are known here (at trace time).
    checks.concat_input_shapes(self.name, [tuple(t.shape) for t in inputs])
    x = inputs[0] if len(inputs) == 1 else ops.concatenate(inputs, axis=-1)
    x = ops.relu(self.batch_norm(x, training=training))
    if training and self.criterion == "expected_l1":
      # x >= 0 after the ReLU, so its mean is E[|x_i|].
      batch_abs_mean = ops.mean(ops.cast(x, "float32"), axis=(0, 1, 2))
      # Variables as tensors (`.value`): jax no longer converts them itself.
      old = self.input_abs_mean.value
      keep = ops.logical_or(
          ops.logical_not(ops.all(ops.isfinite(batch_abs_mean))),
          ops.less_equal(self.measuring.value, 0.0))
      momentum = self.score_momentum
      self.input_abs_mean.assign(ops.where(
          keep, old, momentum * old + (1.0 - momentum) * batch_abs_mean))
    if self.group_lasso > 0:
      kernel = ops.cast(self.conv.kernel.value, "float32")
      self.add_loss(self.group_lasso * ops.sum(ops.sqrt(
          ops.sum(ops.square(kernel), axis=(0, 1, 3)) + 1e-12)))
    live = ops.cast(ops.greater(self.contribution_score.value, 0.0), x.dtype)
    return self.conv(x * live)

  def compute_output_shape(self, input_shape):
    shapes = _shapes(input_shape)
    concat = tuple(shapes[0][:-1]) + (sum(s[-1] for s in shapes),)
    return self.conv.compute_output_shape(concat)

  def get_config(self):
    config = {
        "filters": self.filters,
        "kernel_size": self.kernel_size,
        "strides": self.strides,
        "padding": self.padding,
        "kernel_initializer": keras.initializers.serialize(
            self.kernel_initializer),
        "kernel_regularizer": keras.regularizers.serialize(
            self.kernel_regularizer) if self.kernel_regularizer else None,
        "criterion": self.criterion,
        "score_momentum": self.score_momentum,
        "group_lasso": self.group_lasso,
        "bn_momentum": self.bn_momentum,
        "bn_epsilon": self.bn_epsilon,
        "batch_norm_trainable": self.batch_norm.trainable,
        "conv_trainable": self.conv.trainable,
    }
    return {**super().get_config(), **config}
