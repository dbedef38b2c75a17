"""Nested selections (`UpdateScores(nested=True)`, `tfsdn.nesting`)."""

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import tensorflow as tf

import tfsdn
from tfsdn import nesting
from tfsdn import schedule as schedule_lib
from tfsdn.compat import keras
from tests import helpers


def _kept_sets(readers, scores):
  """{producer: [set of kept channels, one per reader of it]}."""
  kept = {}
  for (sources, _), layer_scores in zip(readers, scores):
    per_producer = {}
    for (producer, channel), score in zip(sources, layer_scores):
      if score > 0:
        per_producer.setdefault(producer, set()).add(channel)
      else:
        per_producer.setdefault(producer, set())
    for producer, channels in per_producer.items():
      kept.setdefault(producer, []).append(channels)
  return kept


def _assert_nested(kept):
  for producer, sets in kept.items():
    for a in sets:
      for b in sets:
        assert a <= b or b <= a, (producer, sorted(a), sorted(b))


@st.composite
def _stages(draw):
  """Readers of a few producers, as in a dense block, and pruning stages."""
  widths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
  readers = []
  for count in range(1, len(widths) + 1):
    producers = draw(st.permutations(range(len(widths))))[:count]
    readers.append(([(p, c) for p in producers for c in range(widths[p])],
                    None))
  stages = draw(st.lists(st.tuples(
      st.lists(st.booleans(), min_size=len(readers), max_size=len(readers)),
      st.floats(0.0, 0.6)), min_size=1, max_size=3))
  return readers, stages, draw(st.integers(0, 2**31 - 1))


@hypothesis.settings(deadline=None, max_examples=200)
@hypothesis.given(case=_stages())
def test_stages_keep_nested_sets_and_exact_counts(case):
  # Each stage: fresh positive scores for the live channels of the due
  # layers (ties included), nest_scores' hand-out, then tfmot's rule (the
  # lowest scores of a layer go). Every stage keeps the readers' sets of
  # every producer nested, and each layer loses what it would have without
  # nesting: its set of score values is unchanged.
  readers, stages, seed = case
  rng = np.random.default_rng(seed)
  scores = [np.ones(len(sources), np.float32) for sources, _ in readers]
  for due, fraction in stages:
    for i, is_due in enumerate(due):
      if not is_due:
        continue
      live = scores[i] > 0
      drawn = rng.integers(1, 4, len(live)).astype(np.float32)
      # Distinct, as UpdateScores makes them (criteria.break_ties).
      drawn = drawn + np.arange(len(live), dtype=np.float32) * 1e-3
      scores[i] = np.where(live, rng.permutation(drawn), 0.0).astype(
          np.float32)
    current = [(sources, s) for (sources, _), s in zip(readers, scores)]
    orders = nesting.shared_orders(current)
    for i, is_due in enumerate(due):
      if not is_due:
        continue
      sources = readers[i][0]
      new = nesting.nested_scores(sources, scores[i], orders)
      for producer in {p for p, _ in sources}:
        within = [k for k, (p, _) in enumerate(sources) if p == producer]
        assert sorted(new[within]) == sorted(scores[i][within])
      np.testing.assert_array_equal(new == 0, scores[i] == 0)
      drop = max(int((scores[i] == 0).sum()),
                 schedule_lib.pruned_count(len(new), fraction))
      new[np.argsort(new, kind="stable")[:drop]] = 0.0
      scores[i] = new
    _assert_nested(_kept_sets(readers, scores))


def test_nested_training_keeps_counts_and_needs_fewer_slices(images,
                                                             tmp_path):
  def train(nested):
    keras.utils.set_random_seed(3)
    pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(
        helpers.tiny_densenet(growth_rate=6),
        tfsdn.StagedSparsity([(2, 0.3), (4, 0.6)])))
    check = tfsdn.UpdateScores(nested=nested)
    helpers.fit_steps(pruned, 5, callbacks=[check])
    for entry in check.history:
      for pruned_count, scheduled, _ in entry["layers"].values():
        assert pruned_count == scheduled
    return (tfsdn.strip(tfsdn.prune.strip_wrappers(pruned), **helpers.EXACT),
            pruned)

  stripped, pruned = train(nested=True)
  readers = [(record.offered, record.live)
             for record in stripped.layers.values()]
  _assert_nested(_kept_sets([(s, None) for s, _ in readers],
                            [np.asarray(l, np.float32) for _, l in readers]))
  model = tfsdn.prune.strip_wrappers(pruned)
  np.testing.assert_allclose(model(images, training=False).numpy(),
                             stripped.model(images, training=False).numpy(),
                             atol=1e-4)
  plain, _ = train(nested=False)

  def slices(compact, name):
    path = tfsdn.export_tflite(compact, tmp_path / f"{name}.tflite")
    ops = tf.lite.Interpreter(model_path=path)._get_ops_details()  # pylint: disable=protected-access
    return sum(op["op_name"] == "STRIDED_SLICE" for op in ops)

  # Every (producer, width) that some layer reads partly is one slice.
  widths = {(source, sum(1 for (s, _), live in zip(record.offered,
                                                    record.live)
                         if s == source and live))
            for record in stripped.layers.values()
            for source in {s for s, _ in record.offered}}
  partial = {(s, w) for s, w in widths
             if 0 < w < stripped.source_channels[s]}
  assert slices(stripped.model, "nested") <= len(partial)
  assert slices(stripped.model, "nested") < slices(plain.model, "plain")


def test_nested_selections_in_a_converted_applications_densenet():
  model = tfsdn.make_prunable(helpers.applications_style_densenet())
  pruned = helpers.compile_sgd(tfsdn.prune_dense_connections(
      model, tfsdn.StagedSparsity([(2, 0.5)])))
  helpers.fit_steps(pruned, 3, callbacks=[tfsdn.UpdateScores(nested=True)])
  stripped = tfsdn.strip(tfsdn.prune.strip_wrappers(pruned), **helpers.EXACT)
  readers = [(record.offered, np.asarray(record.live, np.float32))
             for record in stripped.layers.values()]
  _assert_nested(_kept_sets([(s, None) for s, _ in readers],
                            [live for _, live in readers]))
  assert any(not np.all(live) for _, live in readers)


def test_nested_needs_a_bool_and_a_flat_functional_model():
  with pytest.raises(TypeError, match="nested=1"):
    tfsdn.UpdateScores(nested=1)
  inner = helpers.tiny_densenet()
  outer_input = keras.Input(inner.input_shape[1:])
  outer = keras.Model(outer_input, inner(outer_input))
  with pytest.raises(ValueError, match="nested model"):
    nesting.readers_of(outer)
