"""`UpdateScores`: the callback that runs tfsdn's side of every stage.

tfmot's `UpdatePruningStep` drives the masks; this callback, added beside it,
computes the contribution scores right before each stage (outside the
training step, so the step itself synchronises nothing for tfsdn), stops
the statistics after the last stage, and afterwards reads back what each
stage achieved: it logs each layer's pruned input channels against the
count the schedule asks for (`tfsdn.schedule.pruned_count`), writes both to
TensorBoard when given a `log_dir`, and raises `StageShortfallError` when a
layer was pruned less than scheduled, so a silent under-pruning cannot reach
a results table.
"""

from absl import logging
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfsdn import allocation
from tfsdn.common import checks
from tfsdn import internals
from tfsdn import nesting
from tfsdn.common import stages
from tfsdn.common.stages import StageShortfallError  # pylint: disable=unused-import
from tfsdn.compat import keras
from tfsdn.compat import require_functional
from tfsdn.allocation import AllocatedSparsity
from tfsdn.prunable_concat_conv import PrunableConcatConv
from tfsdn.schedule import StagedSparsity
from tfsdn.schedule import pruned_count


def pruning_wrappers(model):
  """The tfmot wrappers around `PrunableConcatConv`s, nested models included."""
  found = []
  for layer in model.layers:
    if isinstance(layer, internals.PruneLowMagnitude):
      if isinstance(layer.layer, PrunableConcatConv):
        found.append(layer)
    elif isinstance(layer, keras.Model):
      found.extend(pruning_wrappers(layer))
  return found


def _schedule_at(schedule, step):
  """`(should_prune, sparsity)` of `schedule` at `step`, as Python values.

  Runs after every training batch, so a `StagedSparsity` is read from its
  stage list without running TensorFlow; other schedules are called.
  """
  if isinstance(schedule, AllocatedSparsity):
    # The sparsity allocated for the latest stage (set before it).
    return step in schedule.stage_steps, schedule.current_sparsity()
  if isinstance(schedule, StagedSparsity):
    return stages.stage_at(schedule.stages, step)
  should_prune, sparsity = schedule(tf.constant(step, tf.int64))
  return bool(should_prune), float(sparsity)


def _prunes_within(schedule, steps):
  """True if `schedule` prunes at one of `steps` (a range), read cheaply.

  Runs before every training batch: schedules that list their stage steps
  are answered without touching a variable or running TensorFlow.
  """
  stage_steps = _stage_steps(schedule)
  if stage_steps is not None:
    return any(s in steps for s in stage_steps)
  return any(_schedule_at(schedule, s)[0] for s in steps)


def _stage_steps(schedule):
  """The steps at which `schedule` prunes, or None if it does not say."""
  if isinstance(schedule, AllocatedSparsity):
    return schedule.stage_steps
  if isinstance(schedule, StagedSparsity):
    return [step for step, _ in schedule.stages]
  return None


class UpdateScores(tfmot.sparsity.keras.UpdatePruningStep):
  """Computes the scores before every pruning stage and checks it after.

  It is tfmot's `UpdatePruningStep` (which it extends) plus tfsdn's side of
  every stage, so it is the one callback a tfsdn model needs; beside
  `UpdatePruningStep` it does no harm. A model from
  `tfsdn.prune_dense_connections` adds one to `fit`'s callbacks when none is
  there, so tfmot's idiom alone prunes as scheduled; without any, the
  scores would never be computed and a stage would have nothing to go by:

  ```python
  pruned.fit(data, callbacks=[tfsdn.UpdateScores(log_dir="logs")])
  ```

  Before each training call that contains a step at which a layer's
  schedule prunes, it calls that layer's `update_scores()` and, for layers
  under a `tfsdn.GlobalAllocation`, splits the stage's budget over them
  (`tfsdn.allocation.allocate`) (in the model's
  distribution strategy scope: the statistics are averaged over replicas
  and workers once, there), so the stage at step s prunes by scores
  measured up to the step before the call (step s - 1 with
  `steps_per_execution=1`). The `expected_l1` statistics are measured only
  in the steps a stage's scores weigh, those whose weight in the moving
  average is above `tfsdn.common.stages.STATISTICS_TOLERANCE` (1e-7; the last 153
  steps before it at `score_momentum=0.9`): the scores are those of
  measuring at every step to that tolerance, and the steps in between run
  without the statistics' cost. After a layer's last stage they stop.
  After every stage step (with `steps_per_execution > 1`, every step since
  the last batch) it logs, per layer, the pruned input channels and the
  scheduled count. A layer with fewer pruned channels than scheduled raises
  `StageShortfallError` (training stops); one with more (pruned earlier by
  other means) is logged as a warning. A training batch that does not
  advance tfmot's pruning step (the wrapped layers ran in inference mode)
  raises a `StageShortfallError` too, and so does the end of `fit` if a
  layer is then pruned less than its schedule asks for by that step.

  Args:
    log_dir: If given, TensorBoard scalars `stage_check/<layer>/achieved`
      and `.../scheduled` (sparsities) are written there at each stage.
    raise_on_shortfall: Raise `StageShortfallError` when a layer falls
      short (default). With False, a shortfall is logged as an error only.
    nested: If True, the layers that read one producer keep nested sets of
      its channels (`tfsdn.nesting`): after the scores are computed, each
      due layer's scores are handed out again within every producer in an
      order all its readers share, so the strip step reads every producer
      with one slice per reader and the compact model runs fewer ops. Each
      layer still prunes as many channels as scheduled, but which channels
      of a producer it keeps is no longer its own choice: a constraint on
      the criterion, whose accuracy cost the evidence benchmark measures
      (`el1_nested` against `el1_layer`). Needs a functional model with the
      prunable layers in its own graph. Default False.

  Attributes:
    history: One dict per checked stage step: `step`, and `layers`, a dict
      from layer name to `(pruned, scheduled, channels)`.
  """

  def __init__(self, log_dir=None, raise_on_shortfall=True, nested=False):
    super().__init__()
    self.log_dir = log_dir
    self.raise_on_shortfall = checks.boolean("raise_on_shortfall",
                                             raise_on_shortfall)
    self.nested = checks.boolean("nested", nested)
    self._readers = None
    self.history = []
    self._wrappers = []
    self._windows = {}
    self._measuring = {}
    self._last_step = None
    self._steps_per_execution = 1
    self._writer = None

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)  # UpdatePruningStep: step -1 -> 0.
    self._wrappers = pruning_wrappers(self.model)
    if not self._wrappers:
      raise ValueError(
          f"UpdateScores: model {self.model.name!r} has no PrunableConcatConv "
          "wrapped for pruning; use it with a model returned by "
          "tfsdn.prune_dense_connections.")
    if self.nested:
      self._readers = nesting.readers_of(require_functional(self.model))
    self._last_step = self._step()
    # Fixed by compile(): read once, not before every batch.
    self._steps_per_execution = internals.steps_per_execution(self.model)
    for wrapper in self._wrappers:
      schedule = wrapper.pruning_schedule
      if isinstance(schedule, AllocatedSparsity):
        steps = schedule.stage_steps
        close = [(a, b) for a, b in zip(steps, steps[1:])
                 if b - a < self._steps_per_execution]
        if close:
          raise ValueError(
              f"GlobalAllocation stages at steps {close[0]} are closer than "
              f"steps_per_execution={self._steps_per_execution}: the budget "
              "of a stage is split before the training call that contains "
              "it, so one call can hold one stage only. Space the stages "
              "further apart or compile with a smaller steps_per_execution.")
    if self.log_dir and self._writer is None:
      self._writer = tf.summary.create_file_writer(self.log_dir)
    self._windows = {id(w): stages.statistics_window(w.layer.score_momentum)
                     for w in self._wrappers}
    self._measuring = {}  # Read from the variables again: fit may resume.
    self._set_measuring(self._last_step)

  def on_train_batch_begin(self, batch, logs=None):
    step = max(self._step(), 0)
    self._set_measuring(step)
    coming = range(step + 1,
                   step + 1 + self._steps_per_execution)
    due = [wrapper for wrapper in self._wrappers
           if _prunes_within(wrapper.pruning_schedule, coming)]
    if due:
      with self.model.distribute_strategy.scope():
        for wrapper in due:
          if not wrapper.layer.update_scores():
            logging.warning("%s: non-finite raw scores; the stage prunes by "
                            "the scores of before.", wrapper.layer.name)
        if self.nested:
          changed = nesting.nest_scores(self._readers,
                                        [wrapper.layer for wrapper in due])
          logging.info("Nested selections: scores of %d of %d due layers "
                       "handed out again.", len(changed), len(due))
        self._allocate(due, coming)

  def _allocate(self, due, coming):
    """Splits each due `GlobalAllocation`'s budget over its layers."""
    groups = []
    for wrapper in due:
      schedule = wrapper.pruning_schedule
      if not isinstance(schedule, AllocatedSparsity):
        continue
      if not any(schedule.allocation == g[0].pruning_schedule.allocation
                 for g in groups):
        groups.append([w for w in self._wrappers if isinstance(
            w.pruning_schedule, AllocatedSparsity) and
                       w.pruning_schedule.allocation == schedule.allocation])
    for group in groups:
      steps = group[0].pruning_schedule.stage_steps
      step = next(s for s in coming if s in steps)
      kept = allocation.allocate(self.model, group, step)
      logging.info("Global allocation for the stage at step %d: inputs kept "
                   "per layer: %s", step,
                   ", ".join(f"{n} {k}" for n, k in kept.items()))

  def on_train_batch_end(self, batch, logs=None):
    step = self._step()
    if step <= self._last_step:
      raise StageShortfallError(
          f"A training batch of {self.model.name!r} did not advance tfmot's "
          f"pruning step (still {step}): its wrapped PrunableConcatConv "
          "layers ran in inference mode, so no stage can prune them. Is a "
          "nested model called with training=False? Call it without it.")
    first = max(self._last_step, 0) + 1
    self._last_step = step
    staged = [self._check(checked, step) for checked in range(first, step + 1)]
    if any(staged):  # Only a stage can be a layer's last one.
      self._set_measuring(step)

  def _wants_statistics(self, wrapper, step):
    """True if `wrapper`'s layer measures in the call after `step`.

    A layer measures its statistics in the steps before each of its stages
    that the stage's scores weigh (`tfsdn.common.stages.statistics_window`), not
    after its last stage; always if its schedule does not list its stages.
    """
    steps = _stage_steps(wrapper.pruning_schedule)
    if steps is None:
      return True
    upcoming = [s for s in steps if s > step]
    if not upcoming:
      return False
    window = self._windows[id(wrapper)]
    return window is None or (
        upcoming[0] - window <= step + self._steps_per_execution)

  def _set_measuring(self, step):
    """Turns each layer's statistics on or off for the coming steps.

    Runs before every batch: the flags are cached here, so only a change
    touches a variable.
    """
    for wrapper in self._wrappers:
      want = float(self._wants_statistics(wrapper, step))
      key = id(wrapper)
      if key not in self._measuring:
        self._measuring[key] = float(
            keras.backend.get_value(wrapper.layer.measuring))
      if self._measuring[key] != want:
        with self.model.distribute_strategy.scope():
          wrapper.layer.measuring.assign(want)
        self._measuring[key] = want

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.flush()
    step = self._step()
    short = []
    for wrapper in self._wrappers:
      if _stage_steps(wrapper.pruning_schedule) is None:
        continue  # Checked at each of its stages: its sparsity between
                  # them is not what its last stage pruned to.
      _, sparsity = _schedule_at(wrapper.pruning_schedule, step)
      layer = wrapper.layer
      scheduled = pruned_count(layer.input_channels, sparsity)
      pruned = len(layer.pruned_channels())
      if pruned < scheduled:
        short.append(f"{layer.name} {pruned}/{scheduled}/"
                     f"{layer.input_channels}")
    if short and self.raise_on_shortfall:
      raise StageShortfallError(
          f"Training of {self.model.name!r} ended at pruning step {step} "
          f"with {len(short)} layers pruned less than scheduled by then "
          "(pruned/scheduled/channels): " + ", ".join(short))

  def _step(self):
    return int(keras.backend.get_value(self._wrappers[0].pruning_step))

  def _check(self, stage_step, current_step):
    """Checks the layers whose schedule pruned at `stage_step`.

    Returns:
      True if some layer had a stage at `stage_step`.
    """
    rows, short = {}, []
    for wrapper in self._wrappers:
      should_prune, _ = _schedule_at(wrapper.pruning_schedule, stage_step)
      if not should_prune:
        continue
      # The masks now hold the latest stage up to `current_step`.
      _, sparsity = _schedule_at(wrapper.pruning_schedule, current_step)
      layer = wrapper.layer
      channels = layer.input_channels
      scheduled = pruned_count(channels, sparsity)
      pruned = len(layer.pruned_channels())
      rows[layer.name] = (pruned, scheduled, channels)
      if pruned < scheduled:
        short.append(layer.name)
    if not rows:
      return False
    self.history.append({"step": stage_step, "layers": rows})
    pruned_total = sum(r[0] for r in rows.values())
    scheduled_total = sum(r[1] for r in rows.values())
    logging.info(
        "Pruning stage at step %d: %d layers, %d of %d scheduled input "
        "channels pruned; per layer (pruned/scheduled/channels): %s",
        stage_step, len(rows), pruned_total, scheduled_total,
        ", ".join(f"{n} {p}/{s}/{c}" for n, (p, s, c) in rows.items()))
    over = [n for n, (p, s, _) in rows.items() if p > s]
    if over:
      logging.warning("Pruning stage at step %d: layers %s have more pruned "
                      "channels than scheduled (pruned before this stage?).",
                      stage_step, over)
    if self._writer is not None:
      with self._writer.as_default():
        for name, (pruned, scheduled, channels) in rows.items():
          tf.summary.scalar(f"stage_check/{name}/achieved", pruned / channels,
                            step=stage_step)
          tf.summary.scalar(f"stage_check/{name}/scheduled",
                            scheduled / channels, step=stage_step)
    if short:
      message = (
          f"Pruning stage at step {stage_step} fell short in {len(short)} "
          "layers (pruned/scheduled/channels): " + ", ".join(
              f"{n} {rows[n][0]}/{rows[n][1]}/{rows[n][2]}" for n in short))
      if self.raise_on_shortfall:
        raise StageShortfallError(message)
      logging.error(message)
    return True
