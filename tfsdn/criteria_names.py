"""The criterion names and the least live score, shared by both paths."""

CRITERIA = ("expected_l1", "weight_l1", "bn_gamma", "random")

# A live channel never gets a score of exactly zero from a criterion: zero is
# reserved for "pruned", so a channel is only removed by the pruning schedule.
MIN_LIVE_SCORE = 1e-12
