"""Contribution criteria: how much each input channel of a conv matters.

Each criterion is a plain function of tensors, so it can be tested without
Keras. All return one raw, non-negative score per input channel; the layer
then normalises them with `normalize_scores`.
"""

import numpy as np
import tensorflow as tf

CRITERIA = ("expected_l1", "weight_l1", "bn_gamma", "random")

# A live channel never gets a score of exactly zero from a criterion: zero is
# reserved for "pruned", so a channel is only removed by the pruning schedule.
MIN_LIVE_SCORE = 1e-12


def is_live(scores):
  """The one definition of live and pruned: a channel is live iff score > 0.

  A pruned channel has a score of exactly 0. Scores are never negative or
  non-finite (`update_scores` refuses non-finite statistics), so "not live"
  and "pruned" are the same set.

  Args:
    scores: Contribution scores, a tensor or numpy array.

  Returns:
    A boolean tensor (numpy array for numpy input) of the same shape.
  """
  if isinstance(scores, tf.Tensor) or tf.is_tensor(scores):
    return tf.greater(scores, 0)
  return np.asarray(scores) > 0


def kernel_input_l1(kernel):
  """Returns sum(|W[:, :, i, :]|) for every input channel i.

  Args:
    kernel: A conv kernel of shape (kh, kw, in_channels, out_channels).

  Returns:
    A float32 vector of length in_channels.
  """
  kernel = tf.cast(kernel, tf.float32)
  return tf.reduce_sum(tf.abs(kernel), axis=[0, 1, 3])


def kernel_input_l2(kernel):
  """Returns ||W[:, :, i, :]||_2 for every input channel i (group lasso)."""
  kernel = tf.cast(kernel, tf.float32)
  return tf.sqrt(tf.reduce_sum(tf.square(kernel), axis=[0, 1, 3]) + 1e-12)


def expected_l1_scores(input_abs_mean, kernel):
  """The expected-L1 contribution of each input channel.

  Channel i adds conv(x_i, W_i) to the output; its L1 norm per position is at
  most E[|x_i|] * sum(|W[:, :, i, :]|).

  Args:
    input_abs_mean: E[|x_i|] per input channel, shape (in_channels,).
    kernel: The conv kernel, shape (kh, kw, in_channels, out_channels).

  Returns:
    A float32 vector of raw scores, one per input channel.
  """
  return tf.cast(input_abs_mean, tf.float32) * kernel_input_l1(kernel)


def weight_l1_scores(kernel):
  """CondenseNet's criterion: the L1 norm of each input channel's weights."""
  return kernel_input_l1(kernel)


def bn_gamma_scores(gamma):
  """Network Slimming's criterion: |gamma_i| of the input BatchNorm."""
  return tf.abs(tf.cast(gamma, tf.float32))


def normalize_scores(raw_scores, live):
  """Scales scores to mean 1 over live channels; pruned channels stay 0.

  Args:
    raw_scores: Non-negative raw scores, shape (channels,).
    live: 1.0 for live channels, 0.0 for pruned ones, shape (channels,).

  Returns:
    float32 scores: live ones positive with mean 1, pruned ones exactly 0.
  """
  live = tf.cast(live, tf.float32)
  raw = tf.maximum(tf.cast(raw_scores, tf.float32), MIN_LIVE_SCORE) * live
  num_live = tf.reduce_sum(live)
  mean = tf.math.divide_no_nan(tf.reduce_sum(raw), num_live)
  scaled = tf.math.divide_no_nan(raw, mean)
  # Tiny raw scores can underflow to 0 after scaling; keep them alive.
  return tf.maximum(scaled, MIN_LIVE_SCORE) * live


def break_ties(scores, live):
  """Makes live scores pairwise distinct without changing their order.

  tfmot keeps every weight whose magnitude is >= the k-th largest, so tied
  scores at the threshold would all survive and a stage would prune less
  than scheduled. Here, among exactly equal live scores, the channel with
  the higher index gets the larger value (it is the more recent feature map
  in a DenseNet concatenation); distinct scores keep their order. Each value
  moves up by at most a few float32 ulps per tied channel.

  The float32 bit pattern of a positive float is monotone in its value, so
  ties are broken in integer space: in ascending order (ties by index),
  bits[j] = max(bits[j], bits[j - 1] + 1).

  Args:
    scores: Non-negative float32 scores, shape (channels,); pruned ones 0.
    live: Boolean or 0/1 vector, True for live channels.

  Returns:
    float32 scores: live ones positive and pairwise distinct, pruned ones 0.
  """
  scores = tf.convert_to_tensor(scores, tf.float32)
  live = tf.cast(live, tf.bool)
  count = scores.shape[0]
  if count is None or count < 2:
    return tf.where(live, scores, 0.0)
  # Pruned channels sort first (below every live one) and are zeroed again.
  keys = tf.where(live, scores, -1.0)
  order = tf.argsort(keys, stable=True)
  sorted_bits = tf.bitcast(tf.gather(tf.maximum(keys, 0.0), order), tf.int32)
  position = tf.range(count, dtype=tf.int32)
  # bits[j] = j + max_{i <= j}(bits[i] - i): a running max by doubling.
  running = sorted_bits - position
  shift = 1
  while shift < count:
    running = tf.maximum(running, tf.concat(
        [tf.fill([shift], tf.int32.min), running[:-shift]], axis=0))
    shift *= 2
  distinct = tf.bitcast(running + position, tf.float32)
  unsorted = tf.scatter_nd(order[:, None], distinct, [count])
  return tf.where(live, unsorted, 0.0)


def all_finite(*tensors):
  """A scalar bool tensor: True iff every element of every tensor is finite."""
  return tf.reduce_all([tf.reduce_all(tf.math.is_finite(
      tf.cast(t, tf.float32))) for t in tensors])
