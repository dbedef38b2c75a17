"""`Pruning`: the Keras 3 callback that runs the stages during `model.fit`.

It plays the part that tfmot's `UpdatePruningStep` and `tfsdn.UpdateScores`
play together in the tfmot path: before the training call that contains a
stage step it computes every layer's scores, decides how many inputs each
layer keeps (layer-wise: the stage's sparsity, counted as tfmot counts;
global: `tfsdn.common.allocation.GlobalAllocation.plan`), prunes exactly
that many, and checks it. The stage arithmetic is shared with the tfmot
path (`tfsdn.common.stages`), so the same stages prune the same counts at the same
steps.
"""

import fnmatch

from absl import logging
import keras
import numpy as np

from tfsdn.common import liveness
from tfsdn.common import stages as stages_lib
from tfsdn.common.allocation import GlobalAllocation
from tfsdn.common.allocation import raise_protected
from tfsdn.common.allocation import check_reachable
from tfsdn.common.allocation import layer_costs
from tfsdn.common.allocation import least_layerwise_sparsity
from tfsdn.keras3 import graph
from tfsdn.keras3.checks import require_keras3_model
from tfsdn.keras3.layer import PrunableConcatConv


def prunable_layers(model):
  """The `PrunableConcatConv`s of a Keras 3 model, nested models included."""
  found = []
  for layer in model.layers:
    if isinstance(layer, PrunableConcatConv):
      found.append(layer)
    elif isinstance(layer, keras.Model):
      found.extend(prunable_layers(layer))
  return found


def _all_layers(model):
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)
    else:
      yield layer


def dense_macs(model):
  """MACs per example with every input channel live (Conv2D, Dense and
  `PrunableConcatConv`), counted as the tfmot path's `tfsdn.costs` does."""
  total = 0
  for layer in _all_layers(model):
    if isinstance(layer, PrunableConcatConv):
      total += layer_costs([layer], "macs")[0] * layer.input_channels
    elif isinstance(layer, keras.layers.Conv2D):
      kh, kw = layer.kernel_size
      height, width = layer.output.shape[1:3]
      total += (kh * kw * int(layer.input.shape[-1]) // layer.groups *
                layer.filters * height * width)
    elif isinstance(layer, keras.layers.Dense):
      total += int(layer.input.shape[-1]) * layer.units
  return int(total)


def channel_graph(model):
  """`tfsdn.common.liveness` `Node`s of a Keras 3 model, nested models included.

  The Keras 3 counterpart of `tfsdn.costs.channel_graph`: nested models are
  walked through, so the description is that of the flat model strip
  builds.

  Returns:
    `(nodes, outputs)`: the nodes in topological order and the keys of the
    model's outputs.
  """
  nodes, alias = [], {}

  def key(tensor):
    return alias.get(id(tensor), id(tensor))

  def walk(current):
    for node in graph.nodes(current):
      layer = node.operation
      if node.is_input:
        continue
      inputs = list(node.input_tensors)
      output = node.output_tensors[0]
      if isinstance(layer, keras.Model):
        inner = graph.functional(layer)
        for inner_input, outer in zip(inner.inputs, inputs):
          alias[id(inner_input)] = key(outer)
        walk(inner)
        alias[id(output)] = key(inner.outputs[0])
        continue
      rank = len(output.shape)
      pair, macs = 0, 0
      if isinstance(layer, PrunableConcatConv):
        kind = liveness.PRUNABLE
        pair = liveness.pair_macs(layer.kernel_size, *output.shape[1:3])
      elif rank == 4 and graph.is_channel_concat(layer):
        kind = liveness.CONCAT
      elif rank == 4 and graph.passes_channels(layer, node):
        kind = liveness.PASSES
      elif (type(layer) is keras.layers.Conv2D and layer.groups == 1 and  # pylint: disable=unidiomatic-typecheck
            layer.data_format == "channels_last"):
        kind = liveness.CONV
        pair = liveness.pair_macs(layer.kernel_size, *output.shape[1:3])
      else:
        kind = liveness.READS_ALL
        if isinstance(layer, keras.layers.Conv2D):
          pair_cost = liveness.pair_macs(layer.kernel_size, *output.shape[1:3])
          macs = None if pair_cost is None else (
              pair_cost * int(inputs[0].shape[-1]) // layer.groups *
              layer.filters)
        elif isinstance(layer, keras.layers.Dense):
          macs = int(inputs[0].shape[-1]) * layer.units
      nodes.append(liveness.Node(
          kind, layer.name, [key(t) for t in inputs],
          [int(t.shape[-1]) if len(t.shape) else 1 for t in inputs],
          key(output), int(output.shape[-1]) if rank else 1, pair, macs))

  current = graph.functional(model)
  walk(current)
  return nodes, [key(t) for t in current.outputs]


def compact_macs(model, live_masks=None):
  """MACs of the compact model `tfsdn.keras3.strip(model)` would build
  (filters no one reads are not computed), as `tfsdn.costs.compact_macs`.

  Args:
    model: A functional Keras 3 model with `PrunableConcatConv`s.
    live_masks: Dict from prunable layer name to the inputs it would read;
      other layers read their current live channels.
  """
  masks = {layer.name: layer.live_mask() for layer in prunable_layers(model)}
  masks.update(live_masks or {})
  nodes, outputs = channel_graph(model)
  return liveness.compact_macs(nodes, outputs, masks)


def layer_sparsity(model, keep, budget="macs"):
  """The least per-layer sparsity whose estimated cost is <= `keep`.

  The layer-wise counterpart of a `GlobalAllocation` budget (as
  `tfsdn.allocation.layerwise_sparsity` computes it for tf_keras).
  """
  layers = prunable_layers(require_keras3_model(model))
  total = (sum(l.input_channels for l in layers) if budget == "channels"
           else dense_macs(model))
  return least_layerwise_sparsity(layers, total, keep, budget, model.name)


class Pruning(keras.callbacks.Callback):
  """Prunes a Keras 3 tfsdn model in stages during `model.fit`.

  Example:

  ```python
  model = tfsdn.keras3.densenet.DenseNet(depth=40)
  model.compile(...)
  model.fit(data, epochs=30, callbacks=[
      tfsdn.keras3.Pruning([(2000, 0.25), (4000, 0.5)])])
  compact = tfsdn.keras3.strip(model).model
  ```

  Steps count training batches from 1, as in tfmot: a stage at step s
  prunes right before batch s, by scores measured up to batch s - 1, and
  the earliest stage step is `tfsdn.common.stages.FIRST_STAGE_STEP` (2). With
  `steps_per_execution=n > 1` a stage acts before the call of n batches
  that contains its step (up to n - 1 batches early), since the callback
  runs between calls. After the last stage the statistics stop.

  Args:
    schedule: `(step, sparsity)` stages (layer-wise: every pruned layer
      keeps `max(round(C * (1 - sparsity)), 1)` of its C inputs), a dict
      from layer name or `fnmatch` pattern to such stages (or None: not
      pruned; the first matching pattern wins; as
      `tfsdn.prune_dense_connections` takes a dict of schedules), or a
      `tfsdn.keras3.GlobalAllocation` (one ranking under a MAC or channel
      budget, with its floor, ignored layers and overrides).
    layers: With layer-wise stages, names or `fnmatch` patterns of the
      layers to prune (default: every `PrunableConcatConv`); each must
      match a layer.
    raise_on_shortfall: Raise `tfsdn.common.stages.StageShortfallError` if a layer
      ends a stage with fewer pruned inputs than scheduled (default).

  Attributes:
    history: One dict per stage: `step`, and `layers`, a dict from layer
      name to `(pruned, scheduled, channels)`.
  """

  def __init__(self, schedule, layers=None, raise_on_shortfall=True):
    super().__init__()
    if isinstance(schedule, GlobalAllocation):
      if layers is not None:
        raise ValueError("layers applies to layer-wise stages; a "
                         "GlobalAllocation has ignored_layers. Received: "
                         f"layers={layers!r}")
      self.allocation, self.stages, self.per_layer = schedule, None, None
    elif isinstance(schedule, dict):
      if layers is not None:
        raise ValueError("layers applies to one list of stages; a dict "
                         f"names its layers. Received: layers={layers!r}")
      self.allocation, self.stages = None, None
      self.per_layer = {
          pattern: None if value is None else stages_lib.validate_stages(
              value) for pattern, value in schedule.items()}
      if not all(isinstance(p, str) for p in self.per_layer):
        raise ValueError("A dict schedule maps layer names or patterns to "
                         f"stages. Received keys: {list(self.per_layer)}")
    else:
      self.allocation, self.per_layer = None, None
      self.stages = stages_lib.validate_stages(schedule)
    if layers is not None and (isinstance(layers, str) or not all(
        isinstance(p, str) for p in layers)):
      raise ValueError("layers must be a list of layer names or patterns. "
                       f"Received: layers={layers!r}")
    self.layers = None if layers is None else list(layers)
    self.raise_on_shortfall = bool(raise_on_shortfall)
    self.history = []
    self._pruned_layers = []
    self._step = 0
    self._begin = 0
    self._last_stage = 0

  @property
  def stage_steps(self):
    if self.allocation is not None:
      return self.allocation.stage_steps
    if self.per_layer is not None:
      return sorted({step for stages in self.per_layer.values() if stages
                     for step, _ in stages})
    return [step for step, _ in self.stages]

  def _stages_of(self, layer):
    """The stages of `layer` (layer-wise or per-layer schedules)."""
    if self.per_layer is None:
      return self.stages
    for pattern, stages in self.per_layer.items():
      if fnmatch.fnmatchcase(layer.name, pattern):
        return stages
    return None

  def on_train_begin(self, logs=None):
    model = self.model
    everything = prunable_layers(model)
    if not everything:
      raise ValueError(
          f"Pruning: model {model.name!r} has no "
          "tfsdn.keras3.PrunableConcatConv; build it with "
          "tfsdn.keras3.densenet or from those layers.")
    if self.allocation is not None:
      chosen = [l for l in everything
                if not self.allocation.is_ignored(l.name)]
      check_reachable(self.allocation, chosen, everything,
                      layer_costs(chosen, self.allocation.budget),
                      self._dense_cost(chosen), model.name)
    elif self.layers is not None or self.per_layer is not None:
      names = [l.name for l in everything]
      patterns = (self.layers if self.per_layer is None else
                  list(self.per_layer))
      unused = [p for p in patterns
                if not any(fnmatch.fnmatchcase(n, p) for n in names)]
      if unused:
        raise ValueError(f"Pruning layers {unused} match no prunable layer "
                         f"of model {model.name!r} (its prunable layers: "
                         f"{names[:6]}...).")
      chosen = [l for l in everything if (
          self._stages_of(l) is not None if self.per_layer is not None else
          any(fnmatch.fnmatchcase(l.name, p) for p in self.layers))]
    else:
      chosen = everything
    self._pruned_layers = chosen
    self._step = int(np.asarray(model.optimizer.iterations.numpy()))
    self._last_stage = self._step
    self._check_passed_stages(model.name)
    for layer in everything:
      # Layers that are never pruned, or past their last stage, need no
      # statistics.
      last = (None if layer not in chosen else self.stage_steps[-1]
              if self.allocation is not None else
              self._stages_of(layer)[-1][0])
      layer.measuring.assign(
          0.0 if last is None or self._step >= last else 1.0)

  def _check_passed_stages(self, model_name):
    """Refuses to start past stages that never ran on this model.

    Stage steps count the optimizer's steps (`optimizer.iterations`): a
    model trained before without this callback, or by another schedule,
    may already be past some stages. Their effect must be there.
    """
    passed = [s for s in self.stage_steps if s <= self._step]
    if not passed:
      return
    if self.allocation is not None:
      layers = self._pruned_layers
      costs = layer_costs(layers, self.allocation.budget)
      total = self._dense_cost(layers)
      pruned_cost = sum(c * len(l.pruned_channels())
                        for c, l in zip(costs, layers))
      short = (total - pruned_cost >
               self.allocation.keep_at(passed[-1]) * total * (1 + 1e-9))
    else:
      short = any(
          len(l.pruned_channels()) < stages_lib.pruned_count(
              l.input_channels,
              stages_lib.stage_at(self._stages_of(l), self._step)[1])
          for l in self._pruned_layers)
    if short:
      raise stages_lib.StageShortfallError(
          f"Pruning: model {model_name!r} starts at optimizer step "
          f"{self._step}, past the stages at steps {passed}, but is not "
          "pruned as they require. Stage steps count the optimizer's steps "
          "(optimizer.iterations): put the stages after the current step, "
          "or compile the model afresh (a new optimizer starts at 0).")

  def _dense_cost(self, chosen):
    if self.allocation.budget == "channels":
      return sum(layer.input_channels for layer in chosen)
    return dense_macs(self._model)

  def on_train_batch_begin(self, batch, logs=None):
    self._begin = batch
    steps_per_execution = int(getattr(self._model, "steps_per_execution", 1)
                              or 1)
    # The call holds at most the batches left in the epoch.
    left = (self.params or {}).get("steps")
    size = steps_per_execution if left is None else max(
        1, min(steps_per_execution, int(left) - batch))
    coming = range(self._step + 1, self._step + 1 + size)
    for step in self.stage_steps:
      # Every stage in the call, in order, each once.
      if step in coming and step > self._last_stage:
        self._run_stage(step)
        self._last_stage = step

  def on_train_batch_end(self, batch, logs=None):
    left = (self.params or {}).get("steps")
    if left is not None:
      # Keras may report a short last call as a full one.
      batch = min(batch, int(left) - 1)
    self._step += max(batch - self._begin, 0) + 1

  def _scheduled(self, layers, step):
    """Pruned inputs per layer after the stage at `step`."""
    if self.allocation is not None:
      total = self._dense_cost(layers)
      nodes, outputs = channel_graph(self._model)
      protected = [None] * len(layers)
      if self.allocation.ignored_layers:
        protected = []
        for layer in layers:
          mask = np.array([self.allocation.is_ignored(producer) for producer, _
                           in liveness.producers_of_channels(nodes,
                                                             layer.name)])
          protected.append(mask if mask.any() else None)
      compact_cost = None
      if self.allocation.budget == "macs":
        current = {layer.name: layer.live_mask()
                   for layer in prunable_layers(self._model)}
        compact_cost = lambda masks: liveness.compact_macs(
            nodes, outputs, {**current, **masks})
      keep = self.allocation.plan(
          layers, layer_costs(layers, self.allocation.budget), total, step,
          protected, compact_cost)
      for layer, mask in zip(layers, protected):
        if mask is not None:  # The stage keeps an ignored layer's filters.
          layer.contribution_score.assign(raise_protected(
              np.asarray(layer.contribution_score.numpy()), mask))
      return [l.input_channels - k for l, k in zip(layers, keep)]
    counts = []
    for layer in layers:
      _, sparsity = stages_lib.stage_at(self._stages_of(layer), step)
      counts.append(stages_lib.pruned_count(layer.input_channels, sparsity))
    return counts

  def _run_stage(self, step):
    self.model  # pylint: disable=pointless-statement  (syncs JAX state)
    layers = self._pruned_layers
    for layer in layers:
      if not layer.update_scores():
        logging.warning("%s: non-finite raw scores; the stage prunes by the "
                        "scores of before.", layer.name)
    scheduled = self._scheduled(layers, step)
    rows, short = {}, []
    for layer, count in zip(layers, scheduled):
      layer.prune_to(max(count, len(layer.pruned_channels())))
      pruned = len(layer.pruned_channels())
      rows[layer.name] = (pruned, count, layer.input_channels)
      if pruned < count:
        short.append(layer.name)
    self.history.append({"step": step, "layers": rows})
    logging.info(
        "Pruning stage at step %d: %d layers, %d of %d scheduled input "
        "channels pruned; per layer (pruned/scheduled/channels): %s", step,
        len(rows), sum(r[0] for r in rows.values()),
        sum(r[1] for r in rows.values()),
        ", ".join(f"{n} {p}/{s}/{c}" for n, (p, s, c) in rows.items()))
    for layer in layers:
      # A layer's statistics stop after its own last stage.
      last = (self.stage_steps[-1] if self.allocation is not None else
              self._stages_of(layer)[-1][0])
      if step >= last:
        layer.measuring.assign(0.0)
    if short:
      message = (f"Pruning stage at step {step} fell short in {len(short)} "
                 "layers (pruned/scheduled/channels): " + ", ".join(
                     f"{n} {rows[n][0]}/{rows[n][1]}/{rows[n][2]}"
                     for n in short))
      if self.raise_on_shortfall:
        raise stages_lib.StageShortfallError(message)
      logging.error(message)
