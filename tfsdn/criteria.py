"""Contribution criteria: how much each input channel of a conv matters.

Each criterion is a plain function of tensors, so it can be tested without
Keras. All return one raw, non-negative score per input channel; the layer
then normalises them with `normalize_scores`.
"""

import numpy as np
import tensorflow as tf

from tfsdn.common.scores import CRITERIA  # noqa: F401  pylint: disable=unused-import
from tfsdn.common.scores import MIN_LIVE_SCORE


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

  The scaling goes through the largest live score first, so finite raw
  scores whose sum would overflow float32 are still scaled. Scores that
  would fall below `MIN_LIVE_SCORE` are raised to it (a live channel never
  reads as pruned); `break_ties` then orders them by their raw scores.

  Args:
    raw_scores: Non-negative, finite raw scores, shape (channels,).
    live: 1.0 for live channels, 0.0 for pruned ones, shape (channels,).

  Returns:
    float32 scores: live ones positive with mean 1, pruned ones exactly 0.
  """
  live = tf.cast(live, tf.float32)
  raw = tf.maximum(tf.cast(raw_scores, tf.float32), 0.0) * live
  relative = tf.math.divide_no_nan(raw, tf.reduce_max(raw))  # in [0, 1]
  mean = tf.math.divide_no_nan(tf.reduce_sum(relative), tf.reduce_sum(live))
  scaled = tf.math.divide_no_nan(relative, mean)
  return tf.maximum(scaled, MIN_LIVE_SCORE) * live


def break_ties(scores, live, order=None):
  """Makes live scores pairwise distinct, ordered as `order` ranks them.

  tfmot keeps every weight whose magnitude is >= the k-th largest, so tied
  scores at the threshold would all survive and a stage would prune less
  than scheduled. Here live channels are ranked by `order` (default: the
  scores themselves), exact ties in it by index, the higher index ranking
  higher (it is the more recent feature map in a DenseNet concatenation),
  and the result is strictly increasing in that rank. Passing the raw
  scores as `order` keeps their order even where the normalised scores
  rounded or were floored to the same value. Each value moves up by at most
  one float32 ulp per channel ranked below it with an equal or larger score.

  The float32 bit pattern of a positive float is monotone in its value, so
  ties are broken in integer space: in ranked order,
  bits[j] = max(bits[j], bits[j - 1] + 1).

  Args:
    scores: Non-negative float32 scores, shape (channels,); pruned ones 0.
      Must be non-decreasing in `order`'s ranking (normalised raw scores
      are).
    live: Boolean or 0/1 vector, True for live channels.
    order: Optional ranking key per channel (e.g. the raw scores).

  Returns:
    float32 scores: live ones positive and pairwise distinct, pruned ones 0.
  """
  scores = tf.convert_to_tensor(scores, tf.float32)
  live = tf.cast(live, tf.bool)
  count = scores.shape[0]
  if count is None or count < 2:
    return tf.where(live, scores, 0.0)
  # Pruned channels sort first (below every live one) and are zeroed again.
  key = scores if order is None else tf.cast(order, tf.float32)
  order = tf.argsort(tf.where(live, key, -1.0), stable=True)
  values = tf.where(live, scores, 0.0)
  sorted_bits = tf.bitcast(tf.gather(values, order), tf.int32)
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
