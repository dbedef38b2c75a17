"""Paired comparisons of two arms evaluated on the same test images.

Every arm of the evidence experiment predicts every test image, so two arms
are compared image by image: McNemar's exact test on the images where
exactly one of them is right, and a bootstrap interval of the accuracy
difference that resamples seeds and, within each, images (a two-level
bootstrap: it carries both the seed-to-seed variation of training and the
sampling of test images).
"""

import math

import numpy as np


def mcnemar(correct_a, correct_b):
  """Exact two-sided McNemar test.

  Run it per seed: pooling seeds would count one image once per seed, as if
  the runs were independent samples of images, and make p too small.

  Args:
    correct_a: Booleans, one per image, arm A right.
    correct_b: The same for arm B.

  Returns:
    `(only_a, only_b, p_value)`: images only A got right, only B, and the
    exact binomial p-value of `only_a` among `only_a + only_b` at 1/2.
  """
  correct_a = np.asarray(correct_a, bool)
  correct_b = np.asarray(correct_b, bool)
  if correct_a.shape != correct_b.shape:
    raise ValueError("correct_a and correct_b must have one entry per image "
                     f"each. Received shapes {correct_a.shape} and "
                     f"{correct_b.shape}")
  only_a = int(np.sum(correct_a & ~correct_b))
  only_b = int(np.sum(~correct_a & correct_b))
  n = only_a + only_b
  if n == 0:
    return only_a, only_b, 1.0
  k = min(only_a, only_b)
  # Exact in integers (2.0**n overflows a float past n = 1023); the one
  # division rounds correctly.
  tail = sum(math.comb(n, i) for i in range(k + 1))
  return only_a, only_b, min(1.0, 2 * tail / (1 << n))


def bootstrap_difference(correct_a, correct_b, resamples=2000, level=0.95,
                         seed=0):
  """Mean accuracy difference A - B with a two-level bootstrap interval.

  Args:
    correct_a: Array (seeds, images) of booleans: arm A right on an image in
      a seed's run. All seeds are evaluated on the same images.
    correct_b: The same for arm B, for the same seeds.
    resamples: Bootstrap resamples.
    level: Confidence level of the interval.
    seed: Seed of the resampling.

  Returns:
    `(mean, low, high)` in accuracy units (multiply by 100 for points).
    With one seed only images are resampled (seed variation unmeasured).
  """
  correct_a = np.asarray(correct_a, np.float64)
  correct_b = np.asarray(correct_b, np.float64)
  if correct_a.shape != correct_b.shape or correct_a.ndim != 2 or (
      correct_a.size == 0):
    raise ValueError("Need two (seeds, images) arrays of one shape. Received "
                     f"shapes {correct_a.shape} and {correct_b.shape}")
  if isinstance(resamples, bool) or not isinstance(resamples, int) or (
      resamples < 1):
    raise ValueError(f"resamples must be an integer >= 1. Received: "
                     f"resamples={resamples!r}")
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1). Received: level={level!r}")
  diff = correct_a - correct_b
  seeds, images = diff.shape
  rng = np.random.default_rng(seed)
  means = np.empty(resamples)
  for r in range(resamples):
    rows = rng.integers(0, seeds, seeds) if seeds > 1 else np.zeros(1, int)
    cols = rng.integers(0, images, images)
    means[r] = diff[np.ix_(rows, cols)].mean()
  alpha = (1.0 - level) / 2.0
  return (float(diff.mean()), float(np.quantile(means, alpha)),
          float(np.quantile(means, 1.0 - alpha)))


def seeds_needed(half_width_now, seeds_now, half_width_wanted):
  """Seeds for a wanted interval half-width, if it shrinks as 1/sqrt(seeds).

  A planning figure from a pilot: it holds when the seed-to-seed variation
  dominates the interval.
  """
  for name, value in (("half_width_now", half_width_now),
                      ("half_width_wanted", half_width_wanted)):
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f"{name} must be a finite number > 0. Received: "
                       f"{name}={value!r}")
  return max(seeds_now, math.ceil(seeds_now * (half_width_now /
                                               half_width_wanted)**2))
