"""Argument checks that name the bad value, shared by the entry points."""

import math
import numbers

import numpy as np


def real(name, value, low=None, high=None, low_open=False, high_open=False):
  """Returns `value` as a float if it is a finite real number in range.

  Args:
    name: The argument's name, quoted in the error.
    value: What the caller passed.
    low: Lower bound, or None.
    high: Upper bound, or None.
    low_open: Exclude `low` itself.
    high_open: Exclude `high` itself.

  Returns:
    `float(value)`.

  Raises:
    ValueError: naming `name` and `value`, for a non-number (bools
      included), a non-finite number or one out of range.
  """
  try:
    finite = (not isinstance(value, bool) and
              isinstance(value, numbers.Real) and math.isfinite(value))
  except OverflowError:  # An int too large for a float.
    finite = False
  if not finite:
    raise ValueError(
        f"{name} must be a finite number. Received: {name}={value!r}")
  too_low = low is not None and (value <= low if low_open else value < low)
  too_high = high is not None and (value >= high if high_open else
                                   value > high)
  if too_low or too_high:
    interval = (f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
                f"{'inf' if high is None else high}"
                f"{')' if high_open or high is None else ']'}")
    raise ValueError(
        f"{name} must be in {interval}. Received: {name}={value!r}")
  return float(value)


def integer(name, value, low=None, high=2**62):
  """Returns `value` as an int if it is an integer (not a bool) in range.

  Raises:
    ValueError: naming `name` and `value` otherwise.
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer. Received: {name}={value!r}")
  if (low is not None and value < low) or (high is not None and value > high):
    raise ValueError(
        f"{name} must be an integer in [{low}, {high}]. Received: "
        f"{name}={value!r}")
  return int(value)


def concat_limit(value):
  """`max_concat_inputs` of a strip: None, or an integer >= 2.

  Raises:
    ValueError: quoting `value` otherwise.
  """
  if value is not None and (isinstance(value, bool) or
                            not isinstance(value, numbers.Integral) or
                            value < 2):
    raise ValueError("max_concat_inputs must be None or an integer >= 2. "
                     f"Received: max_concat_inputs={value!r}")
  return None if value is None else int(value)


def boolean(name, value):
  """Returns `value` if it is a bool, else raises `TypeError` naming it."""
  if not isinstance(value, bool):
    raise TypeError(f"{name} must be True or False. Received: {name}={value!r}")
  return value


def pair(name, value):
  """A positive int or a pair of them, as a pair of ints."""
  if isinstance(value, numbers.Integral) and not isinstance(value, bool):
    value = (int(value), int(value))
  value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
  if len(value) != 2 or not all(
      isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
      for v in value):
    raise ValueError(
        f"{name} must be a positive int or a pair of them. "
        f"Received: {name}={value!r}")
  return tuple(int(v) for v in value)


def concat_conv_arguments(filters, kernel_size, strides, padding, criterion,
                          score_momentum, group_lasso, bn_momentum,
                          bn_epsilon, criteria):
  """The checked, normalised arguments of either path's PrunableConcatConv.

  Returns:
    A dict of them, by name.

  Raises:
    ValueError: naming the bad argument and its value.
  """
  if criterion not in criteria:
    raise ValueError(f"criterion must be one of {criteria}. "
                     f"Received: criterion={criterion!r}")
  padding = str(padding).lower()
  if padding not in ("same", "valid"):
    raise ValueError(
        f"padding must be 'same' or 'valid'. Received: padding={padding!r}")
  return {
      "filters": integer("filters", filters, low=1),
      "kernel_size": pair("kernel_size", kernel_size),
      "strides": pair("strides", strides),
      "padding": padding,
      "criterion": criterion,
      "score_momentum": real("score_momentum", score_momentum, 0.0, 1.0,
                             high_open=True),
      "group_lasso": real("group_lasso", group_lasso, low=0.0),
      "bn_momentum": real("bn_momentum", bn_momentum, 0.0, 1.0),
      "bn_epsilon": real("bn_epsilon", bn_epsilon, 0.0, low_open=True),
  }


def concat_input_shapes(layer_name, shapes):
  """The channel counts of a PrunableConcatConv's inputs, checked.

  Its inputs are concatenated on the channel axis, so they must be NHWC
  tensors with a known channel count whose batch and spatial sizes agree
  where they are known (an unknown size, None, agrees with any).

  Args:
    layer_name: The layer's name, quoted in the error.
    shapes: The input shapes, each a sequence of ints or None.

  Returns:
    A list of the inputs' channel counts.

  Raises:
    ValueError: quoting the shapes otherwise.
  """
  shapes = [tuple(None if d is None else int(d) for d in s) for s in shapes]
  for shape in shapes:
    if len(shape) != 4 or shape[-1] is None:
      raise ValueError(
          f"{layer_name} takes NHWC tensors with a known channel count. "
          f"Received input shapes: {shapes}")
  for axis, what in ((0, "batch"), (1, "height"), (2, "width")):
    known = {s[axis] for s in shapes if s[axis] is not None}
    if len(known) > 1:
      raise ValueError(
          f"{layer_name} concatenates its inputs on the channel axis, so "
          f"their batch size, height and width must agree; their {what}s "
          f"differ. Received input shapes: {shapes}")
  return [s[-1] for s in shapes]


def same_function(original, compact, predict, input_shapes,
                  low_precision=False):
  """Checks that `compact` computes `original`'s function on one batch.

  The strip step's own check: both models run in inference mode on the
  same two images of random pixels (0-255, as tfsdn's models take them;
  an unknown height or width is taken as 32).

  Args:
    original: The pruned model.
    compact: The compact model built from it.
    predict: `(model, images) -> list of numpy outputs`, in the model's
      Keras; `images` is a list, one array per model input.
    input_shapes: The shape of each model input (None for unknown sizes).
    low_precision: The model computes in 16 bits: 2e-2 instead of 1e-4.

  Raises:
    RuntimeError: naming the output and the largest difference, relative
      to 1 + |expected|, if it is above the tolerance.
  """
  rng = np.random.default_rng(0)
  images = [rng.uniform(0, 255, (2,) + tuple(
      32 if size is None else int(size) for size in shape[1:])).astype(
          "float32") for shape in input_shapes]
  tolerance = 2e-2 if low_precision else 1e-4
  expected, actual = predict(original, images), predict(compact, images)
  for index, (want, got) in enumerate(zip(expected, actual)):
    want = np.asarray(want, np.float64)
    got = np.asarray(got, np.float64)
    if want.shape != got.shape:
      difference = np.inf
    else:
      # The same non-finite value in the same place is the same function.
      alike = (want == got) | (np.isnan(want) & np.isnan(got))
      with np.errstate(invalid="ignore"):
        gaps = np.abs(want - got) / (1.0 + np.abs(want))
      difference = float(np.max(np.where(alike, 0.0, gaps), initial=0.0))
    if not difference <= tolerance:
      raise RuntimeError(
          f"strip built a compact model that computes another function: "
          f"output {index} differs from the pruned model's by {difference:g} "
          f"(relative to 1 + |output|; tolerance {tolerance:g}; shapes "
          f"{want.shape} and {got.shape}) on random images of shapes "
          f"{[i.shape for i in images]}. Please report it; "
          "check_function=False skips this check.")
