import numpy as np
import pytest
import tensorflow as tf

from tfsdn import criteria


def test_kernel_input_l1_sums_over_everything_but_input_axis():
  kernel = np.arange(2 * 2 * 3 * 4, dtype="float32").reshape(2, 2, 3, 4) - 20
  expected = np.abs(kernel).sum(axis=(0, 1, 3))
  np.testing.assert_allclose(criteria.kernel_input_l1(kernel), expected)
  np.testing.assert_allclose(criteria.weight_l1_scores(kernel), expected)


def test_expected_l1_is_mean_abs_input_times_weight_l1():
  kernel = np.random.default_rng(0).normal(size=(3, 3, 5, 2)).astype("float32")
  abs_mean = np.array([0.0, 1.0, 2.0, 0.5, 3.0], "float32")
  expected = abs_mean * np.abs(kernel).sum(axis=(0, 1, 3))
  np.testing.assert_allclose(
      criteria.expected_l1_scores(abs_mean, kernel), expected, rtol=1e-6)


def test_expected_l1_bounds_the_l1_norm_of_a_channels_contribution():
  rng = np.random.default_rng(3)
  x = np.abs(rng.normal(size=(4, 8, 8, 3))).astype("float32")
  kernel = rng.normal(size=(3, 3, 3, 5)).astype("float32")
  abs_mean = x.mean(axis=(0, 1, 2))
  for channel in range(3):
    only = np.zeros_like(x)
    only[..., channel] = x[..., channel]
    out = tf.nn.conv2d(only, kernel, 1, "SAME").numpy()
    per_position = np.abs(out).sum(axis=-1).mean()
    bound = criteria.expected_l1_scores(abs_mean, kernel).numpy()[channel]
    assert per_position <= bound * 1.0001


def test_bn_gamma_is_absolute_gamma():
  np.testing.assert_allclose(
      criteria.bn_gamma_scores([-2.0, 0.5, 0.0]), [2.0, 0.5, 0.0])


def test_group_lasso_norm_per_input_channel():
  kernel = np.zeros((1, 1, 2, 2), "float32")
  kernel[0, 0, 0] = [3.0, 4.0]
  np.testing.assert_allclose(
      criteria.kernel_input_l2(kernel), [5.0, 0.0], atol=1e-5)


def test_normalize_scores_mean_one_over_live_and_zero_stays_zero():
  raw = np.array([2.0, 4.0, 6.0, 100.0], "float32")
  live = np.array([1, 1, 1, 0], "float32")
  scores = criteria.normalize_scores(raw, live).numpy()
  np.testing.assert_allclose(scores, [0.5, 1.0, 1.5, 0.0], rtol=1e-6)


def test_normalize_scores_keeps_live_channels_with_zero_raw_score_alive():
  scores = criteria.normalize_scores([0.0, 1.0], [1.0, 1.0]).numpy()
  assert scores[0] > 0
  assert scores[1] == pytest.approx(2.0, rel=1e-6)


def test_is_live_is_score_above_zero_for_numpy_and_tensors():
  scores = np.array([0.0, 1e-12, 2.0, 0.0], "float32")
  np.testing.assert_array_equal(criteria.is_live(scores),
                                [False, True, True, False])
  np.testing.assert_array_equal(criteria.is_live(tf.constant(scores)).numpy(),
                                [False, True, True, False])


def test_break_ties_orders_equal_scores_by_index_and_keeps_pruned_zero():
  scores = np.array([1, 1, 1, 0, 1e-12, 1e-12, 2, 1], "float32")
  out = criteria.break_ties(scores, scores > 0).numpy()
  assert out[3] == 0
  live = np.delete(out, 3)
  assert len(set(live.tolist())) == len(live)
  # Ascending order: the floor ties, then the ones by index, then 2.
  assert np.argsort(out).tolist() == [3, 4, 5, 0, 1, 2, 7, 6]
  np.testing.assert_allclose(out, scores, rtol=1e-5)


def test_break_ties_works_inside_xla():
  fn = tf.function(criteria.break_ties, jit_compile=True)
  out = fn(tf.ones([5]), tf.constant([True, True, False, True, True])).numpy()
  assert out[2] == 0 and len(set(np.delete(out, 2).tolist())) == 4


def test_all_finite():
  assert bool(criteria.all_finite([1.0, 2.0], [0.0]))
  assert not bool(criteria.all_finite([1.0, np.inf]))
  assert not bool(criteria.all_finite([1.0], [np.nan]))


def test_order_follows_raw_scores_where_normalised_ones_floor_or_overflow():
  live = np.ones(5, "float32")
  for raw in ([1e13, 1.0, 0.1, 1e-3, 5.0], [3e38, 3e38, 1.0, 2.0, 5.0]):
    raw = np.asarray(raw, "float32")
    scores = criteria.break_ties(criteria.normalize_scores(raw, live), live,
                                 order=raw).numpy()
    assert np.isfinite(scores).all() and (scores > 0).all()
    # Ascending by raw score, equal raw scores by index.
    assert np.argsort(scores).tolist() == np.lexsort(
        (np.arange(5), raw)).tolist()
