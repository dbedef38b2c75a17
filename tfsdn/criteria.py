"""Contribution criteria: how much each input channel of a conv matters.

Each criterion is a plain function of tensors, so it can be tested without
Keras. All return one raw, non-negative score per input channel; the layer
then normalises them with `normalize_scores`.
"""

import tensorflow as tf

CRITERIA = ("expected_l1", "weight_l1", "bn_gamma", "random")

# A live channel never gets a score of exactly zero from a criterion: zero is
# reserved for "pruned", so a channel is only removed by the pruning schedule.
MIN_LIVE_SCORE = 1e-12


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
