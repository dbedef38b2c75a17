"""The CIFAR training recipe shared by the example script and the benchmark.

SGD with Nesterov momentum, the learning rate divided by 10 at 50% and 75%
of the epochs (as in the DenseNet paper; in runs of fewer than 3 epochs, one
drop or none: `step_decay`), and pruning stages spaced evenly in
steps between the stage steps of `begin_epoch` and `end_epoch`
(`tfsdn.schedule.epoch_step`).
"""

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfsdn.common import stages as training_plan
from tfsdn.compat import keras
from tfsdn.allocation import GlobalAllocation
from tfsdn.schedule import StagedSparsity

# TensorFlow-free, shared with the Keras 3 script.
default_pruning_epochs = training_plan.default_pruning_epochs
step_decay = training_plan.step_decay


def staged_schedule(final_sparsity, num_stages, epochs, steps_per_epoch,
                    begin_epoch=None, end_epoch=None):
  """A `StagedSparsity` with `num_stages` stages from `begin` to `end` epoch.

  Args:
    final_sparsity: Sparsity after the last stage, in (0, 1).
    num_stages: Number of stages.
    epochs: Training epochs (sets the default begin and end epochs).
    steps_per_epoch: Training batches per epoch.
    begin_epoch: Epoch of the first stage (default `epochs // 8`).
    end_epoch: Epoch of the last stage (default `epochs // 4`).

  Returns:
    A `StagedSparsity`.
  """
  begin, end = default_pruning_epochs(epochs, begin_epoch, end_epoch)
  return StagedSparsity.evenly(final_sparsity, num_stages, begin, end,
                               steps_per_epoch=steps_per_epoch)


def global_schedule(mac_budget, num_stages, epochs, steps_per_epoch,
                    begin_epoch=None, end_epoch=None, floor=0.1):
  """A `GlobalAllocation` to `mac_budget` with the stage timing above.

  Args:
    mac_budget: Fraction of the dense MACs the compact model keeps, (0, 1).
    num_stages: Number of stages.
    epochs: Training epochs (sets the default begin and end epochs).
    steps_per_epoch: Training batches per epoch.
    begin_epoch: Epoch of the first stage (default `epochs // 8`).
    end_epoch: Epoch of the last stage (default `epochs // 4`).
    floor: Least fraction of its inputs every layer keeps.

  Returns:
    A `tfsdn.GlobalAllocation`.
  """
  begin, end = default_pruning_epochs(epochs, begin_epoch, end_epoch)
  return GlobalAllocation.evenly(mac_budget, num_stages, begin, end,
                                 steps_per_epoch=steps_per_epoch, floor=floor)


def compile_for_training(model, learning_rate, jit_compile=False):
  """Compiles `model` (logits out) with the recipe's SGD and top-1 accuracy."""
  model.compile(
      optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9,
                                     nesterov=True),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"], jit_compile=jit_compile)
  return model


def strip_and_evaluate(model, data, strategy):
  """Removes tfmot's wrappers and measures top-1 accuracy on `data`.

  Under a multi-worker strategy every worker must call this (evaluation is
  collective).

  Args:
    model: A trained model (logits out), wrapped for pruning or not.
    data: Batches of `(images, labels)`.
    strategy: The `tf.distribute.Strategy` the model was built under.

  Returns:
    `(stripped_model, accuracy)`.
  """
  with strategy.scope():
    stripped = tfmot.sparsity.keras.strip_pruning(model)
    stripped.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
  return stripped, float(stripped.evaluate(data, verbose=0)[1])


def saved_model_accuracy(path, data):
  """Top-1 accuracy of an exported SavedModel, loaded as TF Serving would.

  Args:
    path: A SavedModel written by `tfsdn.export_saved_model`.
    data: Batches of `(images, labels)`.

  Returns:
    The fraction of correct predictions, a float.
  """
  serve = tf.saved_model.load(path).signatures["serving_default"]
  correct = total = 0
  for images, labels in data:
    logits = serve(images=images)["logits"]
    correct += int(tf.reduce_sum(tf.cast(
        tf.argmax(logits, -1) == tf.cast(labels, tf.int64), tf.int32)))
    total += int(labels.shape[0])
  return correct / total
