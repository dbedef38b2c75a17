"""The Keras 3 stages: exact counts at exact steps, global budgets, resume."""

import keras
import numpy as np
import pytest

import tfsdn.keras3 as sdn
from tfsdn.common import stages
from tfsdn.keras3.pruning import compact_macs


def _model(**kwargs):
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4, **kwargs)
  model.compile(optimizer=keras.optimizers.SGD(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  return model


def _data(count=32):
  rng = np.random.default_rng(0)
  return (rng.uniform(0, 255, (count, 32, 32, 3)).astype("float32"),
          rng.integers(0, 10, count))


class _PrunedPerStep(keras.callbacks.Callback):
  """Records the pruned inputs of one layer before every batch."""

  def __init__(self, name):
    super().__init__()
    self.name, self.seen = name, []

  def on_train_batch_end(self, batch, logs=None):
    self.seen.append(len(self.model.get_layer(self.name).pruned_channels()))


def test_each_stage_prunes_exactly_its_count_at_its_step():
  model = _model()
  images, labels = _data()
  pruning = sdn.Pruning([(3, 0.3), (6, 0.6)])
  recorder = _PrunedPerStep("transition1")
  model.fit(images, labels, batch_size=4, epochs=1, verbose=0,
            callbacks=[pruning, recorder])
  channels = model.get_layer("transition1").input_channels
  first = stages.pruned_count(channels, 0.3)
  second = stages.pruned_count(channels, 0.6)
  # Batch s (1-based) runs after the stage at step s.
  assert recorder.seen == [0, 0, first, first, first, second, second, second]
  assert [h["step"] for h in pruning.history] == [3, 6]
  for layer in sdn.prunable_layers(model):
    assert len(layer.pruned_channels()) == stages.pruned_count(
        layer.input_channels, 0.6)
    assert float(layer.measuring.numpy()) == 0.0  # no stage left


def test_stages_continue_across_fit_calls_and_a_saved_model(tmp_path):
  model = _model()
  images, labels = _data()
  model.fit(images, labels, batch_size=4, epochs=1, verbose=0,
            callbacks=[sdn.Pruning([(3, 0.3), (12, 0.6)])])
  path = str(tmp_path / "half.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  layer = loaded.get_layer("block2_layer2")
  assert len(layer.pruned_channels()) == stages.pruned_count(
      layer.input_channels, 0.3)
  pruning = sdn.Pruning([(3, 0.3), (12, 0.6)])
  loaded.fit(images, labels, batch_size=4, epochs=1, verbose=0,
             callbacks=[pruning])
  assert [h["step"] for h in pruning.history] == [12]
  assert len(layer.pruned_channels()) == stages.pruned_count(
      layer.input_channels, 0.6)


def test_global_allocation_meets_its_mac_budget_after_strip():
  model = _model()
  images, labels = _data()
  allocation = sdn.GlobalAllocation([(3, 0.7), (6, 0.5)], floor=0.2)
  model.fit(images, labels, batch_size=4, epochs=1, verbose=0,
            callbacks=[sdn.Pruning(allocation)])
  dense = sdn.dense_macs(model)
  compact = sdn.strip(model, slice_cost_macs=0).model  # The budget's reads.
  # The compact model (filters no one reads are gone too) lands within the
  # budget and less than 5% below it.
  assert 0.95 * 0.5 * dense <= sdn.dense_macs(compact) <= 0.5 * dense
  assert sdn.dense_macs(compact) == compact_macs(model)
  counts = [len(l.pruned_channels()) / l.input_channels
            for l in sdn.prunable_layers(model)]
  assert len(set(np.round(counts, 3))) > 1  # not one fraction everywhere
  for layer in sdn.prunable_layers(model):
    assert layer.live_mask().sum() >= np.ceil(0.2 * layer.input_channels)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_mac_budget_is_met_and_ignored_layers_keep_inputs_and_filters(seed):
  keras.utils.set_random_seed(seed)
  model = sdn.densenet.DenseNet(depth=10, growth_rate=6)
  model.compile(optimizer=keras.optimizers.SGD(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  images, labels = _data(16)
  allocation = sdn.GlobalAllocation([(3, 0.6)], ignored_layers=["block1_*"])
  model.fit(images, labels, batch_size=4, epochs=1, verbose=0,
            callbacks=[sdn.Pruning(allocation)])
  stripped = sdn.strip(model, slice_cost_macs=0)
  ratio = sdn.dense_macs(stripped.model) / sdn.dense_macs(model)
  assert 0.95 * 0.6 <= ratio <= 0.6
  for name, record in stripped.layers.items():
    if name.startswith("block1_"):
      assert record.live.all(), name
      assert record.filters_computed == record.filters, name


def test_layer_patterns_and_malformed_stages_are_refused():
  with pytest.raises(ValueError, match="step=1"):
    sdn.Pruning([(1, 0.5)])
  with pytest.raises(ValueError, match="sparsity=1.5"):
    sdn.Pruning([(5, 1.5)])
  model = _model()
  images, labels = _data(8)
  with pytest.raises(ValueError, match=r"\['nope\*'\] match no"):
    model.fit(images, labels, batch_size=4, verbose=0,
              callbacks=[sdn.Pruning([(2, 0.5)], layers=["nope*"])])
  chosen = sdn.Pruning([(2, 0.5)], layers=["block1_*"])
  model.fit(images, labels, batch_size=4, verbose=0, callbacks=[chosen])
  assert model.get_layer("block1_layer1").pruned_channels().size
  assert not model.get_layer("block2_layer1").pruned_channels().size


def test_layer_sparsity_is_the_least_that_meets_the_budget():
  model = _model()
  sparsity = sdn.layer_sparsity(model, 0.6)
  layers = sdn.prunable_layers(model)
  from tfsdn.common.allocation import layer_costs  # pylint: disable=g-import-not-at-top
  costs = layer_costs(layers, "macs")
  total = sdn.dense_macs(model)

  def cost(s):
    return total - sum(c * stages.pruned_count(l.input_channels, s)
                       for c, l in zip(costs, layers))
  assert cost(sparsity) <= 0.6 * total < cost(sparsity - 0.001)


def test_a_dict_of_per_layer_stages_prunes_each_layer_its_own_counts():
  model = _model()
  images, labels = _data(16)
  pruning = sdn.Pruning({"transition*": [(2, 0.5)],
                         "block1_layer1": [(2, 0.25), (3, 0.5)],
                         "block3_*": None})
  model.fit(images, labels, batch_size=4, epochs=1, verbose=0,
            callbacks=[pruning])
  transition = model.get_layer("transition1")
  assert len(transition.pruned_channels()) == stages.pruned_count(
      transition.input_channels, 0.5)
  assert len(model.get_layer("block1_layer1").pruned_channels()) == (
      stages.pruned_count(16, 0.5))
  assert not model.get_layer("block3_layer1").pruned_channels().size
  assert not model.get_layer("block2_layer1").pruned_channels().size
  assert float(transition.measuring.numpy()) == 0.0
  assert float(model.get_layer("block2_layer1").measuring.numpy()) == 0.0


@pytest.mark.parametrize("stage_list, expected_steps", [
    ([(2, 0.3), (3, 0.6)], [2, 3]),   # two stages in one call of 4
    ([(7, 0.3), (11, 0.6)], [7, 11]),  # step 7 after a short last call
])
def test_steps_per_execution_runs_every_stage_once(stage_list,
                                                   expected_steps):
  model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
  model.compile(optimizer=keras.optimizers.SGD(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True), steps_per_execution=4)
  images, labels = _data(24)  # 6 batches of 4 per epoch: calls of 4 and 2
  pruning = sdn.Pruning(stage_list)
  model.fit(images, labels, batch_size=4, epochs=2, verbose=0,
            callbacks=[pruning])
  assert [h["step"] for h in pruning.history] == expected_steps
  layer = model.get_layer("transition1")
  assert len(layer.pruned_channels()) == stages.pruned_count(
      layer.input_channels, 0.6)


def test_a_model_already_past_its_stages_is_refused():
  model = _model()
  images, labels = _data(24)
  model.fit(images, labels, batch_size=4, epochs=1, verbose=0)  # 6 steps
  with pytest.raises(stages.StageShortfallError, match="optimizer step 6"):
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0,
              callbacks=[sdn.Pruning([(3, 0.5)])])
