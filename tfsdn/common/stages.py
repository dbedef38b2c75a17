"""Stage arithmetic shared by the tfmot and Keras 3 paths (no TensorFlow).

A stage is a `(step, sparsity)` pair: at training step `step` (the first
batch is step 1) every layer it covers is pruned to `sparsity`, keeping
exactly `max(round(C * (1 - sparsity)), 1)` of its C inputs (tfmot's rule).
These functions are plain Python and numpy so that the Keras 3 path
(`tfsdn.keras3`) uses the same steps and counts without importing
TensorFlow or tfmot.
"""

import math
import numbers

import numpy as np

from tfsdn.common import checks

# tfmot's first training batch is step 1 and the scores are first measured in
# its forward pass, after the mask update; step 2 is the first that sees them.
FIRST_STAGE_STEP = 2


class StageShortfallError(RuntimeError):
  """A pruning stage left some layer with fewer pruned channels than scheduled."""


# The expected_l1 statistics are a moving average: a stage's scores weigh
# the steps more than `window` steps before it by momentum ** window. They
# are measured only in the steps before each stage that weigh more than
# this, so the scores match those of measuring at every step to it.
STATISTICS_TOLERANCE = 1e-7


def statistics_window(momentum, tolerance=STATISTICS_TOLERANCE):
  """Steps before a stage whose statistics its scores weigh.

  Args:
    momentum: The moving average's momentum, in [0, 1).
    tolerance: What the older steps may weigh together, in (0, 1); 0 or
      None: every step counts (returns None).

  Returns:
    The smallest `window` >= 1 with `momentum ** window <= tolerance`, or
    None for every step.
  """
  if not tolerance:
    return None
  if momentum <= 0:
    return 1
  return max(1, math.ceil(math.log(tolerance) / math.log(momentum)))


def stage_at(stages, step):
  """`(prunes, sparsity)` at `step`: whether a stage prunes there, and the
  sparsity in force after it (0.0 before the first stage)."""
  sparsity = 0.0
  for stage_step, stage_sparsity in stages:
    if stage_step > step:
      break
    sparsity = stage_sparsity
  return any(s == step for s, _ in stages), sparsity


def validate_stages(stages):
  """Checks `(step, sparsity)` stages; returns them as `(int, float)` pairs.

  Steps must be strictly increasing integers >= `FIRST_STAGE_STEP`,
  sparsities non-decreasing and in [0, 1).

  Raises:
    ValueError: if a stage is malformed; the message quotes it.
  """
  stages = [tuple(stage) if _is_sequence(stage) else stage
            for stage in stages] if _is_sequence(stages) else stages
  if not isinstance(stages, list) or not stages:
    raise ValueError(
        "stages must be a non-empty list of (step, sparsity) pairs. "
        f"Received: stages={stages!r}")
  normalized = []
  for stage in stages:
    if not _is_sequence(stage) or len(stage) != 2:
      raise ValueError(
          f"Each stage must be a (step, sparsity) pair. Received: {stage!r}")
    step, sparsity = stage
    if (isinstance(step, bool) or not isinstance(step, numbers.Integral) or
        not FIRST_STAGE_STEP <= step <= 2**62):
      raise ValueError(
          f"Stage steps must be integers in [{FIRST_STAGE_STEP}, 2**62]: "
          "tfmot counts "
          "training batches from step 1, and the scores are first measured "
          "during step 1, so a stage at step 0 never runs and one at step 1 "
          f"would see untrained, equal scores. Received: step={step!r} in "
          f"stage {stage!r}")
    if (isinstance(sparsity, bool) or
        not isinstance(sparsity, numbers.Real) or
        not 0.0 <= sparsity < 1.0):
      raise ValueError(
          f"Stage sparsities must be in [0, 1). Received: "
          f"sparsity={sparsity!r} in stage {stage!r}")
    if normalized and step <= normalized[-1][0]:
      raise ValueError(
          "Stage steps must be strictly increasing. Received: step "
          f"{step} after step {normalized[-1][0]} in stages={stages!r}")
    if normalized and sparsity < normalized[-1][1]:
      raise ValueError(
          "Stage sparsities must be non-decreasing. Received: sparsity "
          f"{sparsity} after {normalized[-1][1]} in stages={stages!r}")
    normalized.append((int(step), float(sparsity)))
  return normalized


def evenly_stages(final_sparsity, num_stages, begin_step, end_step,
           steps_per_epoch=None):
  """Stages of equal sparsity increments, evenly spaced in time.

  Stage i (1-based) prunes to `final_sparsity * i / num_stages` at
  `begin_step + (i - 1) * (end_step - begin_step) / (num_stages - 1)`
  (rounded), so the first stage is at `begin_step` and the last at
  `end_step`. With `steps_per_epoch`, `begin_step` and `end_step` are
  epochs, converted to steps by `epoch_step`, and the stages are spaced
  evenly in steps between those two (so a middle stage may fall inside an
  epoch).

  Args:
    final_sparsity: Sparsity after the last stage, in (0, 1).
    num_stages: Number of stages, >= 1.
    begin_step: Step of the first stage, >= 2 (or its epoch, >= 0).
    end_step: Step (or epoch) of the last stage, >= begin_step.
    steps_per_epoch: If given, `begin_step`/`end_step` count epochs.

  Returns:
    A list of `(step, sparsity)` pairs.

  Raises:
    ValueError: if an argument is out of range.
  """
  checks.real("final_sparsity", final_sparsity, 0.0, 1.0, low_open=True,
              high_open=True)
  checks.integer("num_stages", num_stages, low=1)
  checks.real("begin_step", begin_step)
  checks.real("end_step", end_step)
  if begin_step < 0 or end_step < begin_step:
    raise ValueError(
        "Need 0 <= begin_step <= end_step. Received: "
        f"begin_step={begin_step!r}, end_step={end_step!r}")
  if steps_per_epoch is not None and (
      not isinstance(steps_per_epoch, numbers.Integral) or
      steps_per_epoch < 1):
    raise ValueError(
        "steps_per_epoch must be a positive integer. Received: "
        f"steps_per_epoch={steps_per_epoch!r}")
  epoch_range = (begin_step, end_step)
  if steps_per_epoch is not None:
    begin_step = epoch_step(begin_step, steps_per_epoch)
    end_step = epoch_step(end_step, steps_per_epoch)
  elif begin_step < FIRST_STAGE_STEP:
    raise ValueError(
        f"begin_step must be >= {FIRST_STAGE_STEP} (see StagedSparsity). "
        f"Received: begin_step={begin_step!r}")
  if num_stages == 1:
    times = [end_step]
  else:
    span = (end_step - begin_step) / (num_stages - 1)
    times = [begin_step + i * span for i in range(num_stages)]
  steps = [int(round(t)) for t in times]
  if len(set(steps)) != len(steps):
    epochs = (f" (epochs {epoch_range[0]} to {epoch_range[1]} at "
              f"steps_per_epoch={steps_per_epoch})"
              if steps_per_epoch is not None else "")
    raise ValueError(
        f"{num_stages} stages do not fit between steps {begin_step} and "
        f"{end_step}{epochs}: stages would share steps {steps}.")
  sparsities = [final_sparsity * (i + 1) / num_stages
                for i in range(num_stages)]
  return validate_stages(list(zip(steps, sparsities)))


def epoch_step(epoch, steps_per_epoch):
  """The pruning step at which a stage planned for `epoch` prunes.

  The one conversion from epochs to steps in tfsdn. Epoch `e >= 1` starts at
  step `e * steps_per_epoch + 1`, when the scores have seen the whole of
  epoch `e - 1`. Epoch 0 starts before any score is measured, so its stage
  waits until the middle of the epoch: step `max(2, steps_per_epoch // 2)`.

  Args:
    epoch: Epoch, an integer >= 0.
    steps_per_epoch: Training batches per epoch, an integer >= 1.

  Returns:
    The step, an int >= `FIRST_STAGE_STEP`.

  Raises:
    ValueError: for a negative or non-integer epoch or steps_per_epoch.
  """
  if (isinstance(steps_per_epoch, bool) or
      not isinstance(steps_per_epoch, numbers.Integral) or steps_per_epoch < 1):
    raise ValueError(
        "steps_per_epoch must be a positive integer. Received: "
        f"steps_per_epoch={steps_per_epoch!r}")
  if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or (
      epoch < 0):
    raise ValueError(
        f"epoch must be an integer >= 0. Received: epoch={epoch!r}")
  if epoch == 0:
    return max(FIRST_STAGE_STEP, steps_per_epoch // 2)
  return int(epoch) * steps_per_epoch + 1


def pruned_count(channels, sparsity):
  """How many of `channels` inputs a stage at `sparsity` prunes.

  tfmot keeps `max(round(channels * (1 - sparsity)), 1)` weights, with the
  product in float32 and round-half-to-even (`tf.math.round`); the rest are
  pruned. Computed here the same way, in numpy.

  Args:
    channels: Number of input channels of a layer.
    sparsity: The stage's sparsity.

  Returns:
    The number of pruned channels, an int.
  """
  kept = np.round(np.float32(channels) * (np.float32(1) - np.float32(sparsity)))
  return int(channels - max(int(kept), 1))


def sparsity_for_count(channels, pruned):
  """A float32 sparsity at which tfmot prunes exactly `pruned` of `channels`.

  The inverse of `pruned_count`: `pruned_count(channels, s) == pruned`.

  Args:
    channels: Number of input channels, >= 1.
    pruned: Channels to prune, in [0, channels - 1].

  Returns:
    The sparsity, a Python float (exactly representable in float32).

  Raises:
    ValueError: if `pruned` is out of range.
  """
  channels = checks.integer("channels", channels, low=1)
  pruned = checks.integer("pruned", pruned, low=0)
  if pruned > channels - 1:
    raise ValueError(f"A layer keeps at least one of its {channels} channels."
                     f" Received: pruned={pruned}")
  sparsity = np.float32(pruned / channels)
  for _ in range(64):
    got = pruned_count(channels, sparsity)
    if got == pruned:
      return float(sparsity)
    sparsity = np.nextafter(sparsity, np.float32(1 if got < pruned else 0),
                            dtype=np.float32)
  raise AssertionError(f"no float32 sparsity prunes {pruned} of {channels}")


def _is_sequence(value):
  return isinstance(value, (list, tuple))


# The CIFAR recipe's timing (when the learning rate drops and when the
# pruning stages fall by default): tfsdn.recipe and the Keras 3 script.


def default_pruning_epochs(epochs, begin_epoch=None, end_epoch=None):
  """`(begin_epoch, end_epoch)`: defaults `epochs // 8` and `epochs // 4`.

  The last stage comes a quarter of the training before the first learning
  rate drop (at `epochs // 2`), so the network recovers from it at the full
  learning rate. In benchmarks/cifar_table.py's default setting, ending the
  stages at the drop instead left expected_l1 at 46.3% held-out accuracy
  rather than 53.5% (see README.md).
  """
  begin = epochs // 8 if begin_epoch is None else begin_epoch
  end = max(begin, epochs // 4 if end_epoch is None else end_epoch)
  return begin, end


def step_decay(learning_rate, epochs):
  """Epoch -> learning rate: /10 at 50% and /100 at 75% of `epochs`.

  The drops fall on epochs `int(0.5 * epochs)` and `int(0.75 * epochs)`.
  In a run too short to keep them apart, a drop that would fall on epoch 0
  or on the same epoch as the other is left out, so every drop divides the
  rate by 10 only: 2 epochs train at `learning_rate` and then a tenth of it
  (not a hundredth), 1 epoch at `learning_rate` throughout.

  Args:
    learning_rate: The initial learning rate.
    epochs: Training epochs, >= 1.

  Returns:
    A function `(epoch, lr=None) -> learning rate` for
    `keras.callbacks.LearningRateScheduler`.

  Raises:
    ValueError: if `epochs` < 1.
  """
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1. Received: epochs={epochs!r}")
  drops = sorted({e for e in (int(0.5 * epochs), int(0.75 * epochs)) if e > 0})

  def schedule(epoch, unused_lr=None):
    return learning_rate / 10 ** sum(epoch >= drop for drop in drops)

  return schedule
