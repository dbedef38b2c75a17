"""The numpy criteria (Keras 3 path) agree with the TF ones (tfmot path)."""

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np

from tfsdn import criteria
from tfsdn.common import scores

_RAW = hnp.arrays(np.float32, st.integers(1, 40), elements=st.one_of(
    st.just(0.0), st.just(1.0),
    st.floats(0, 2.0**99, width=32, allow_subnormal=False,
              exclude_max=False).map(float)))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(raw=_RAW, data=st.data())
def test_normalisation_and_tie_breaking_match_the_tfmot_path(raw, data):
  live = data.draw(hnp.arrays(bool, raw.shape))
  ours = scores.break_ties(scores.normalize_scores(raw, live), live,
                           order=raw)
  theirs = criteria.break_ties(criteria.normalize_scores(raw, live), live,
                               order=raw).numpy()
  np.testing.assert_array_equal(ours > 0, theirs > 0)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)
  # The same order: the same channels go first at every count.
  np.testing.assert_array_equal(np.argsort(ours, kind="stable"),
                                np.argsort(theirs, kind="stable"))
  assert len(set(ours[live].tolist())) == int(live.sum())


def test_raw_criteria_match():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 7, 5)).astype(np.float32)
  abs_mean = rng.uniform(size=7).astype(np.float32)
  gamma = rng.normal(size=7).astype(np.float32)
  np.testing.assert_allclose(
      scores.raw_scores("expected_l1", abs_mean, kernel, gamma),
      criteria.expected_l1_scores(abs_mean, kernel).numpy(), rtol=1e-6)
  np.testing.assert_allclose(
      scores.raw_scores("weight_l1", abs_mean, kernel, gamma),
      criteria.weight_l1_scores(kernel).numpy(), rtol=1e-6)
  np.testing.assert_allclose(
      scores.raw_scores("bn_gamma", abs_mean, kernel, gamma),
      criteria.bn_gamma_scores(gamma).numpy(), rtol=1e-6)


def test_prune_lowest_prunes_exactly_and_keeps_pruned():
  current = np.array([0.5, 0.0, 2.0, 1.0, 3.0], np.float32)
  result = scores.prune_lowest(current, 3)
  assert (result == 0).sum() == 3 and result[1] == 0 and result[0] == 0
  assert (scores.prune_lowest(current, 1) == current).all()  # never unprunes
