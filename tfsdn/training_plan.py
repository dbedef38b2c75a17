"""The CIFAR recipe's timing, shared by both paths (no TensorFlow).

When the learning rate drops and when the pruning stages fall by default;
`tfsdn.recipe` (tfmot path) and `examples/train_cifar_keras3.py` use it.
"""


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
