"""`PrunableConcatConv`: concat -> BN -> ReLU -> input-channel mask -> conv."""

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfsdn.common import checks
from tfsdn import criteria
from tfsdn import internals
from tfsdn.compat import keras


def _as_list(inputs):
  if isinstance(inputs, (list, tuple)):
    return list(inputs)
  return [inputs]


def _channel_means(x):
  """The mean of each channel of an NHWC batch, in float32.

  `tf.reduce_mean(x, [0, 1, 2])`, computed as one batched matrix product
  per image (ones @ its pixels) and a mean over the images: oneDNN runs it
  2-3 times faster than TensorFlow's reduction on CPUs, and its shorter
  sums are closer to the exact mean (within 2e-7 relative against about
  2e-6 for the reduction, on 64x32x32 batches). The statistics are read at
  every training step, so this is most of what measuring them costs
  (`benchmarks/training_overhead.py`).
  """
  x = tf.cast(x, tf.float32)
  shape = tf.shape(x)
  pixels = tf.reshape(x, [shape[0], shape[1] * shape[2], shape[3]])
  weights = tf.fill([shape[0], 1, shape[1] * shape[2]],
                    1.0 / tf.cast(shape[1] * shape[2], tf.float32))
  return tf.reduce_mean(tf.matmul(weights, pixels), axis=[0, 1])


@keras.utils.register_keras_serializable(package="tfsdn")
class PrunableConcatConv(keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
  """A DenseNet conv whose concatenated input channels can be pruned.

  The layer concatenates its inputs on the channel axis, applies
  BatchNormalization and ReLU, multiplies every input channel by its mask
  (1 if live, 0 if pruned) and convolves without bias. It keeps one float32
  contribution score per input channel (the variable
  `contribution_score`); a channel is live iff its score is > 0 and pruned
  iff it is exactly 0. `get_prunable_weights()` returns that score variable, so
  `tfmot.sparsity.keras.prune_low_magnitude` prunes the lowest-scoring input
  channels, and a pruned channel stays pruned: `update_scores` (called by
  `tfsdn.UpdateScores` before each stage) only ever rewrites live scores.
  In training the layer only measures the statistics its criterion needs,
  per replica, without synchronising.

  Example:

  ```python
  features = [stem, layer1_out, layer2_out]
  new_features = tfsdn.PrunableConcatConv(12, 3, name="block1_layer3")(features)
  ```

  Args:
    filters: Number of output channels of the conv.
    kernel_size: Conv kernel size, an int or a pair.
    strides: Conv strides, an int or a pair.
    padding: `"same"` or `"valid"`.
    kernel_initializer: Initializer of the conv kernel.
    kernel_regularizer: Regularizer of the conv kernel.
    criterion: How contribution scores are measured: `"expected_l1"`
      (default), `"weight_l1"`, `"bn_gamma"`, or `"random"` (a fixed random
      score per channel, the control arm of experiments).
    score_momentum: Momentum of the moving average of E[|x_i|] used by
      `"expected_l1"`, in [0, 1).
    group_lasso: Strength lambda of the group-lasso loss
      lambda * sum_i ||W[:, :, i, :]||_2; 0 disables it.
    bn_momentum: Momentum of the BatchNormalization moving statistics.
    bn_epsilon: Epsilon of the BatchNormalization.
    bn_synchronized: Synchronise the BatchNormalization's batch statistics
      across replicas (`BatchNormalization(synchronized=True)`).
    batch_norm_trainable: False freezes the BatchNormalization: its
      parameters are not trained and, as in tf_keras, it normalises with its
      moving statistics even in training. Read back from
      `self.batch_norm.trainable` by `get_config`.
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
               bn_synchronized=False,
               batch_norm_trainable=True,
               conv_trainable=True,
               **kwargs):
    super().__init__(**kwargs)
    arguments = checks.concat_conv_arguments(
        filters, kernel_size, strides, padding, criterion, score_momentum,
        group_lasso, bn_momentum, bn_epsilon, criteria.CRITERIA)
    for name, value in arguments.items():
      setattr(self, name, value)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    self.bn_synchronized = bool(bn_synchronized)
    self.batch_norm = keras.layers.BatchNormalization(
        momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="bn",
        synchronized=self.bn_synchronized, dtype=self.dtype_policy)
    self.batch_norm.trainable = bool(batch_norm_trainable)
    self.conv = keras.layers.Conv2D(
        self.filters, self.kernel_size, strides=self.strides,
        padding=self.padding, use_bias=False,
        kernel_initializer=self.kernel_initializer,
        kernel_regularizer=self.kernel_regularizer, name="conv",
        dtype=self.dtype_policy)
    self.conv.trainable = bool(conv_trainable)

  def build(self, input_shape):
    shapes = input_shape if isinstance(input_shape, (list, tuple)) and (
        input_shape and isinstance(input_shape[0], (list, tuple,
                                                    tf.TensorShape))) else [
                                                        input_shape]
    shapes = [tf.TensorShape(s) for s in shapes]
    self.input_channel_counts = checks.concat_input_shapes(
        self.name, [s.as_list() if s.rank is not None else () for s in shapes])
    channels = sum(self.input_channel_counts)
    concat_shape = shapes[0][:-1].concatenate([channels])
    self.conv_output_shape = tuple(
        self.conv.compute_output_shape(concat_shape).as_list())
    self.batch_norm.build(concat_shape)
    self.conv.build(concat_shape)
    score_initializer = (
        keras.initializers.RandomUniform(0.05, 1.0)
        if self.criterion == "random" else "ones")
    # Scores and statistics stay float32 under mixed precision (no
    # autocast). The statistics are kept per replica and averaged when read
    # (ON_READ, like BatchNormalization's moving statistics), so measuring
    # them costs no synchronisation; the scores are computed from the
    # averaged statistics by `update_scores`, once before each stage.
    self.contribution_score = self.add_weight(
        "contribution_score", shape=(channels,), dtype=tf.float32,
        initializer=score_initializer, trainable=False,
        aggregation=tf.VariableAggregation.MEAN,
        experimental_autocast=False)
    self.input_abs_mean = self.add_weight(
        "input_abs_mean", shape=(channels,), dtype=tf.float32,
        initializer="zeros", trainable=False,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.MEAN, experimental_autocast=False)
    # 1.0 while later stages still need the statistics; set to 0 after the
    # last stage, when measuring would be wasted work.
    self.measuring = self.add_weight(
        "measuring", shape=(), dtype=tf.float32, initializer="ones",
        trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        experimental_autocast=False)
    if self.group_lasso > 0:
      self.add_loss(lambda: self.group_lasso * tf.reduce_sum(
          criteria.kernel_input_l2(self.conv.kernel)))
    super().build(input_shape)

  @property
  def input_channels(self):
    """Total number of input channels (after concatenation)."""
    return int(self.contribution_score.shape[0])

  def get_prunable_weights(self):
    return [self.contribution_score]

  def live_mask(self):
    """A boolean numpy vector: True for live input channels, False for pruned.

    Raises:
      ValueError: if a score is negative or not finite (only a hand-set
        score can be: training never writes one), since such a channel is
        neither live nor pruned.
    """
    scores = self.contribution_score.numpy()
    bad = np.flatnonzero(~np.isfinite(scores) | (scores < 0))
    if len(bad):
      raise ValueError(
          f"Layer {self.name!r} has invalid contribution scores at input "
          f"channels {bad[:8].tolist()}: {scores[bad[:8]].tolist()}. Scores "
          "must be finite and >= 0 (0 marks a pruned channel).")
    return criteria.is_live(scores)

  def live_channels(self):
    """Indices of the live input channels, ascending, as a numpy array."""
    return np.flatnonzero(self.live_mask())

  def pruned_channels(self):
    """Indices of the pruned input channels, ascending, as a numpy array."""
    return np.flatnonzero(~self.live_mask())

  def sparsity(self):
    """The fraction of input channels that are pruned."""
    return float(np.mean(~self.live_mask()))

  def raw_scores(self):
    """The criterion's raw (unnormalised) score per input channel."""
    if self.criterion == "expected_l1":
      return criteria.expected_l1_scores(self.input_abs_mean,
                                         self.conv.kernel)
    if self.criterion == "weight_l1":
      return criteria.weight_l1_scores(self.conv.kernel)
    if self.criterion == "bn_gamma":
      return criteria.bn_gamma_scores(self.batch_norm.gamma)
    return tf.identity(self.contribution_score)  # "random": fixed scores.

  def update_scores(self):
    """Recomputes the contribution scores of the live input channels.

    Called once before each pruning stage by the `tfsdn.UpdateScores`
    callback (outside the training step; under a tf.distribute strategy, in
    its scope), so a stage prunes by scores measured up to the step before
    it. `expected_l1` scores come from the moving average of E[|x_i|]
    (`score_momentum`), averaged over replicas and workers, and the kernel;
    `weight_l1` and `bn_gamma` from the weights at that moment; `random`
    scores stay as drawn. Live scores are normalised to mean 1 and made
    pairwise distinct in the order of the raw scores (`criteria`), pruned
    ones stay 0, and non-finite raw scores (diverged weights) leave the
    scores as they were. Every replica computes the same scores.

    Returns:
      True if the scores were updated, False if they were left as they were.
    """
    raw = self.raw_scores()
    if not bool(criteria.all_finite(raw)):
      return False
    live = criteria.is_live(self.contribution_score)
    if self.criterion == "random":
      # Fixed scores: not renormalised (which would drift by ulps); distinct
      # scores go through break_ties bit for bit unchanged.
      scores = criteria.break_ties(raw, live)
    else:
      scores = criteria.break_ties(
          criteria.normalize_scores(raw, live), live, order=raw)
    self.contribution_score.assign(scores)
    return True

  def call(self, inputs, training=None):
    # In the compute dtype (bfloat16/float16 under a mixed policy), also
    # when a float32 tfmot wrapper calls this method directly.
    inputs = [tf.cast(t, self.compute_dtype) for t in _as_list(inputs)]
    # Sizes unknown when built are known here (at trace time).
    checks.concat_input_shapes(self.name, [t.shape.as_list() for t in inputs
                                           if t.shape.rank is not None])
    x = inputs[0] if len(inputs) == 1 else tf.concat(inputs, axis=-1)
    x = self.batch_norm(x, training=training)
    x = tf.nn.relu(x)
    live = tf.cast(criteria.is_live(self.contribution_score), x.dtype)
    if self.criterion != "expected_l1":
      return self.conv(x * live)  # Scores need no statistics.

    if training is None:
      training = keras.backend.learning_phase()

    def measure():
      batch_abs_mean = _channel_means(x)
      # A non-finite batch (an overflow, a NaN input) must not reach the
      # statistics: one NaN score would read as pruned and, through the
      # normalisation, spread to the whole layer.
      new_abs_mean = tf.where(
          criteria.all_finite(batch_abs_mean),
          self.score_momentum * self.input_abs_mean +
          (1.0 - self.score_momentum) * batch_abs_mean, self.input_abs_mean)
      with tf.control_dependencies([self.input_abs_mean.assign(new_abs_mean)]):
        return tf.constant(True)

    def skip():
      return tf.constant(False)

    # Local to each replica: no synchronisation in the training step.
    update = tf.__internal__.smart_cond.smart_cond(
        training, lambda: tf.cond(self.measuring > 0, measure, skip), skip)
    with tf.control_dependencies([update]):
      x = x * live
    return self.conv(x)

  def compute_output_shape(self, input_shape):
    shapes = input_shape if isinstance(input_shape, list) else [input_shape]
    shape = tf.TensorShape(shapes[0]).as_list()
    shape[-1] = sum(tf.TensorShape(s)[-1] for s in shapes)
    return self.conv.compute_output_shape(tf.TensorShape(shape))

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
        "bn_synchronized": self.bn_synchronized,
        "batch_norm_trainable": self.batch_norm.trainable,
        "conv_trainable": self.conv.trainable,
    }
    return {**super().get_config(), **config}


# Finding the layers in a model (re-exported by tfsdn.prune).


def unwrap(layer):
  """The layer inside a tfmot pruning wrapper, or the layer itself."""
  if isinstance(layer, internals.PruneLowMagnitude):
    return layer.layer
  return layer


def _has_wrappers(model):
  return any(isinstance(layer, internals.PruneLowMagnitude) or (
      isinstance(layer, keras.Model) and _has_wrappers(layer))
             for layer in model.layers)


def strip_wrappers(model):
  """`tfmot.sparsity.keras.strip_pruning(model)` if it has wrappers, else `model`.

  Wrappers inside nested models count too.
  """
  if _has_wrappers(model):
    return tfmot.sparsity.keras.strip_pruning(model)
  return model


def prunable_layers(model):
  """All `PrunableConcatConv` layers of a model, wrapped or not, nested too.

  Args:
    model: A tf_keras model.

  Returns:
    A list of `PrunableConcatConv` layers in model order.
  """
  found = []
  for layer in map(unwrap, model.layers):
    if isinstance(layer, PrunableConcatConv):
      found.append(layer)
    elif isinstance(layer, keras.Model):
      found.extend(prunable_layers(layer))
  return found
