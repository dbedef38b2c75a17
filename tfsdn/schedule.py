"""`StagedSparsity`: a tfmot pruning schedule that prunes in a few stages."""

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfsdn.common import stages as stages_lib
from tfsdn.compat import keras

# The stage arithmetic is TensorFlow-free, shared with the Keras 3 path.
FIRST_STAGE_STEP = stages_lib.FIRST_STAGE_STEP
epoch_step = stages_lib.epoch_step
pruned_count = stages_lib.pruned_count
sparsity_for_count = stages_lib.sparsity_for_count


@keras.utils.register_keras_serializable(package="tfsdn")
class StagedSparsity(tfmot.sparsity.keras.PruningSchedule):
  """Prunes exactly at each listed step, to that stage's sparsity.

  Between stages nothing is pruned, so the network adapts to what is left
  before the next stage removes more ("self-learning" pruning). Steps are
  tfmot pruning steps: the first training batch is step 1, and its forward
  pass is the first to measure contribution scores, so the earliest step at
  which a stage can act is `FIRST_STAGE_STEP` (2); earlier steps are refused.

  Exactness: a stage at sparsity `s` leaves every prunable layer with C input
  channels with exactly `max(round(C * (1 - s)), 1)` live channels (tfmot's
  rule; `round` halves to even, computed in float32), the highest-scoring
  ones, so `C - max(round(C * (1 - s)), 1)` are pruned (`pruned_count`).
  `PrunableConcatConv` keeps its live scores pairwise distinct, so ties
  cannot make a stage prune less.

  Example:

  ```python
  schedule = tfsdn.StagedSparsity([(1000, 0.25), (2000, 0.5)])
  # or: three stages reaching 0.5, spread over epochs 0 to 100:
  schedule = tfsdn.StagedSparsity.evenly(
      0.5, num_stages=3, begin_step=0, end_step=100, steps_per_epoch=390)
  pruned = tfsdn.prune_dense_connections(model, schedule)
  ```

  Args:
    stages: A sequence of `(step, sparsity)` pairs: steps strictly
      increasing integers >= 2, sparsities non-decreasing and in [0, 1).

  Raises:
    ValueError: if a stage is malformed; the message quotes it.
  """

  def __init__(self, stages):
    self.stages = stages_lib.validate_stages(stages)

  @classmethod
  def evenly(cls, final_sparsity, num_stages, begin_step, end_step,
             steps_per_epoch=None):
    """Stages of equal sparsity increments, evenly spaced in time.

    See `tfsdn.common.stages.evenly_stages` for the spacing and the checks.

    Returns:
      A `StagedSparsity`.
    """
    return cls(stages_lib.evenly_stages(final_sparsity, num_stages, begin_step,
                                        end_step, steps_per_epoch))

  @classmethod
  def from_epochs(cls, stages, steps_per_epoch):
    """Stages given as `(epoch, sparsity)`, converted to steps by `epoch_step`.

    Args:
      stages: `(epoch, sparsity)` pairs, epochs counted from 0.
      steps_per_epoch: Training batches per epoch.

    Returns:
      A `StagedSparsity`.
    """
    return cls([(epoch_step(epoch, steps_per_epoch), sparsity)
                for epoch, sparsity in stages])

  def __call__(self, step):
    steps = tf.constant([s for s, _ in self.stages], dtype=tf.int64)
    sparsities = tf.constant([0.0] + [p for _, p in self.stages],
                             dtype=tf.float32)
    step = tf.cast(step, tf.int64)
    should_prune = tf.reduce_any(tf.equal(steps, step))
    stages_reached = tf.reduce_sum(tf.cast(steps <= step, tf.int32))
    return should_prune, tf.gather(sparsities, stages_reached)

  def get_config(self):
    return {
        "class_name": keras.utils.get_registered_name(self.__class__),
        "config": {"stages": [list(stage) for stage in self.stages]},
    }

  @classmethod
  def from_config(cls, config):
    if "config" in config:
      config = config["config"]
    return cls(**config)

  def __eq__(self, other):
    return isinstance(other, StagedSparsity) and self.stages == other.stages

  def __hash__(self):
    return hash(tuple(self.stages))

  def __repr__(self):
    return f"StagedSparsity(stages={self.stages!r})"
