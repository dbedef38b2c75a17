"""Contribution scores in numpy: the criteria, normalisation and ties.

The Keras 3 path (`tfsdn.keras3`) computes its scores here, once before each
stage and outside the training step, so they are backend-independent. The
tfmot path computes the same quantities with TensorFlow ops in
`tfsdn.criteria` (they run under a `tf.distribute` strategy, on distributed
variables); `tests/test_scores.py` checks that the two agree. A channel is
live iff its score is > 0 and pruned iff it is exactly 0, in both paths.
"""

import numpy as np

CRITERIA = ("expected_l1", "weight_l1", "bn_gamma", "random")

# A live channel never gets a score of exactly zero from a criterion: zero is
# reserved for "pruned", so a channel is only removed by the pruning schedule.
MIN_LIVE_SCORE = 1e-12



def kernel_input_l1(kernel):
  """sum(|W[:, :, i, :]|) per input channel of a (kh, kw, in, out) kernel."""
  return np.sum(np.abs(np.asarray(kernel, np.float32)), axis=(0, 1, 3),
                dtype=np.float32)


def raw_scores(criterion, input_abs_mean, kernel, gamma):
  """The criterion's raw, non-negative score per input channel.

  Args:
    criterion: `"expected_l1"`, `"weight_l1"` or `"bn_gamma"` (`"random"`
      scores are fixed draws, kept by the layer).
    input_abs_mean: Moving average of E[|x_i|] per input channel.
    kernel: The conv kernel, (kh, kw, in_channels, out_channels).
    gamma: The input BatchNormalization's scale, (in_channels,).

  Returns:
    A float32 vector.
  """
  if criterion == "expected_l1":
    return np.asarray(input_abs_mean, np.float32) * kernel_input_l1(kernel)
  if criterion == "weight_l1":
    return kernel_input_l1(kernel)
  if criterion == "bn_gamma":
    return np.abs(np.asarray(gamma, np.float32))
  raise ValueError(f"No raw scores for criterion={criterion!r}.")


def normalize_scores(raw_scores, live):  # pylint: disable=redefined-outer-name
  """Scales live scores to mean 1 (through the largest first); pruned stay 0.

  The numpy twin of `tfsdn.criteria.normalize_scores`.
  """
  live = np.asarray(live).astype(np.float32)
  raw = np.maximum(np.asarray(raw_scores, np.float32), np.float32(0)) * live
  largest = raw.max() if raw.size else np.float32(0)
  relative = raw / largest if largest > 0 else np.zeros_like(raw)
  count = live.sum(dtype=np.float32)
  mean = relative.sum(dtype=np.float32) / count if count > 0 else 0
  scaled = relative / mean if mean > 0 else np.zeros_like(relative)
  return (np.maximum(scaled, np.float32(MIN_LIVE_SCORE)) * live).astype(
      np.float32)


def break_ties(scores, live, order=None):
  """Makes live scores pairwise distinct, ordered as `order` ranks them.

  The numpy twin of `tfsdn.criteria.break_ties` (same ranking, same bits):
  live channels are ranked by `order` (default the scores), exact ties by
  index (higher index ranks higher), and in that ranking
  bits[j] = max(bits[j], bits[j - 1] + 1) on the float32 bit patterns.
  """
  scores = np.asarray(scores, np.float32)
  live = np.asarray(live).astype(bool)
  if scores.shape[0] < 2:
    return np.where(live, scores, np.float32(0)).astype(np.float32)
  key = scores if order is None else np.asarray(order, np.float32)
  ranked = np.argsort(np.where(live, key, np.float32(-1)), kind="stable")
  values = np.where(live, scores, np.float32(0)).astype(np.float32)
  bits = values[ranked].view(np.int32).astype(np.int64)
  position = np.arange(len(bits))
  distinct = (np.maximum.accumulate(bits - position) + position).astype(
      np.int32).view(np.float32)
  result = np.empty_like(scores)
  result[ranked] = distinct
  return np.where(live, result, np.float32(0)).astype(np.float32)


def prune_lowest(scores, pruned):
  """Scores with exactly `pruned` channels at 0: the lowest live ones go.

  Args:
    scores: Current scores (pruned channels 0, live ones distinct).
    pruned: How many channels must be pruned in total; never fewer than
      are pruned already (a pruned channel stays pruned).

  Returns:
    A float32 copy of `scores`.

  Raises:
    ValueError: if `pruned` would leave no live channel.
  """
  scores = np.array(scores, np.float32)
  if not 0 <= pruned < len(scores):
    raise ValueError(f"A layer keeps at least one of its {len(scores)} "
                     f"channels. Received: pruned={pruned}")
  live = np.flatnonzero(scores > 0)
  extra = pruned - (len(scores) - len(live))
  if extra > 0:
    # Stable: among equal scores the lower index goes first, as in
    # break_ties' ranking.
    lowest = live[np.argsort(scores[live], kind="stable")[:extra]]
    scores[lowest] = 0
  return scores
