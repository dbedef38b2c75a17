"""Where the compact model will run, and the strip layout that is fastest there.

A compact layer reads the live channels of each feature map it is offered.
Reading exactly them costs the fewest MACs but one slice (and one more
concatenation input) per contiguous range; reading the channels of a gap
between two ranges too, with zero kernel rows, costs that gap's MACs and
saves an op. Which is faster depends on the runtime and the batch size: an
op's fixed cost is paid once per batch, a MAC once per image. The planner
here (no TensorFlow) turns a `Target` into `strip`'s layout options with a
two-number cost model per runtime, `RuntimeCosts`:

    merge a gap when  gap_macs * batch_size / macs_per_second <= op_seconds

that is, `slice_cost_macs = op_seconds * macs_per_second / batch_size`,
plus the switches each runtime favours (unfused BatchNormalization for
TensorFlow's oneDNN kernels, concatenations of at most 5 inputs for
XNNPACK, running concatenations). The built-in costs were measured on a
2-core x86 machine (`benchmarks/deploy_speed.py`); `tfsdn.calibration`
measures them on the machine at hand (opt-in, cached on disk).
"""

import dataclasses
import math
import numbers
from typing import Optional

RUNTIMES = ("tf", "tf_xla", "litert", "litert_int8", "onnx")


@dataclasses.dataclass(frozen=True)
class RuntimeCosts:
  """What one op and one MAC cost in a runtime, for the layout planner.

  Attributes:
    op_seconds: The time one more op costs (a channel slice and one more
      input of a concatenation) per call, in seconds, >= 0.
    macs_per_second: Convolution multiply-accumulates per second, > 0.
    op_seconds_per_image: What one more op costs on top of `op_seconds`
      per image of the batch (runtimes whose slices copy slowly), >= 0.
  """
  op_seconds: float
  macs_per_second: float
  op_seconds_per_image: float = 0.0

  def __post_init__(self):
    for name, value, low in (("op_seconds", self.op_seconds, 0.0),
                             ("macs_per_second", self.macs_per_second, None),
                             ("op_seconds_per_image",
                              self.op_seconds_per_image, 0.0)):
      if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
          not math.isfinite(value) or value < 0 or
          (low is None and value == 0)):
        raise ValueError(
            f"{name} must be a finite number "
            f"{'>= 0' if low is not None else '> 0'}. Received: "
            f"{name}={value!r}")


# Measured on a 2-core x86 machine (AVX-512; TF 2.21 with oneDNN, LiteRT
# 2.3 with XNNPACK, ONNX Runtime 1.32) by `tfsdn.calibration.calibrate` at
# batch 1 and 32, rounded: one more slice costs what 0.1 to 0.4 M MACs cost.
DEFAULT_COSTS = {
    "tf": RuntimeCosts(op_seconds=4e-6, macs_per_second=40e9,
                       op_seconds_per_image=3.5e-6),
    # XLA fuses slices and concatenations into the convolution's input.
    "tf_xla": RuntimeCosts(op_seconds=0.0, macs_per_second=40e9),
    "litert": RuntimeCosts(op_seconds=4e-6, macs_per_second=70e9,
                           op_seconds_per_image=2.4e-6),
    "litert_int8": RuntimeCosts(op_seconds=4e-6, macs_per_second=140e9,
                                op_seconds_per_image=1.2e-6),
    # ONNX Runtime slices channels-first, whole planes, so a slice's cost
    # is paid per image. Fitted on whole trained networks, not on single
    # ops (a slice timed alone costs about 2 us): reads widened for gaps
    # of up to 20,000 MACs per image ran 1.13x / 1.31x dense on a
    # DenseNet-40 (batch 1 / 32; exact reads 1.13x / 1.35x, 100,000:
    # 1.02x / 0.99x) and 1.11x / 1.17x on a DenseNet-121 at 64x64 (exact
    # reads: 0.49x at batch 1; 100,000: 1.21x / 1.19x). They lay out
    # slices asked for explicitly: the `onnx` target itself gathers
    # (`strip_options`).
    "onnx": RuntimeCosts(op_seconds=0.0, macs_per_second=50e9,
                         op_seconds_per_image=4e-7),
}


@dataclasses.dataclass(frozen=True)
class Target:
  """Where a compact model will be served: a runtime and a batch size.

  Example:

  ```python
  stripped = tfsdn.strip(pruned, target=tfsdn.Target("litert", batch_size=1))
  ```

  Attributes:
    runtime: `"tf"` (a SavedModel in TensorFlow / TF Serving, plain),
      `"tf_xla"` (the same, XLA-compiled), `"litert"` (LiteRT float32 with
      XNNPACK), `"litert_int8"` (LiteRT full-integer int8) or `"onnx"`
      (ONNX Runtime, CPU).
    batch_size: Images per call the layout is chosen for, an int >= 1.
    costs: The runtime's `RuntimeCosts`; None for the built-in ones
      (`DEFAULT_COSTS`), or those `tfsdn.calibration.calibrate` measured.
  """
  runtime: str = "tf"
  batch_size: int = 1
  costs: Optional[RuntimeCosts] = None

  def __post_init__(self):
    if self.runtime not in RUNTIMES:
      raise ValueError(f"runtime must be one of {RUNTIMES}. Received: "
                       f"runtime={self.runtime!r}")
    if (isinstance(self.batch_size, bool) or
        not isinstance(self.batch_size, numbers.Integral) or
        self.batch_size < 1):
      raise ValueError("batch_size must be an integer >= 1. Received: "
                       f"batch_size={self.batch_size!r}")
    if self.costs is not None and not isinstance(self.costs, RuntimeCosts):
      raise TypeError("costs must be a tfsdn.RuntimeCosts or None. "
                      f"Received: costs={self.costs!r}")

  @property
  def runtime_costs(self):
    """The costs the planner uses: `costs`, or the built-in ones."""
    return self.costs or DEFAULT_COSTS[self.runtime]


# What `strip(model)` is built for when no target is given: TensorFlow
# (SavedModel, TF Serving) at batch 1, where per-op costs weigh most. On a
# trained DenseNet-121 (64x64) it ran 1.44x / 1.39x dense at batch 1 / 32,
# where exact reads ran 0.49x / 0.88x (0.69x / 0.84x with running
# concatenations and unfused batch norm; docs/deploy_speed_targets_d121.json).
DEFAULT_TARGET = Target("tf", batch_size=1)


def slice_cost_macs(target):
  """MACs that cost as much as one more slice on `target` (per image)."""
  costs = target.runtime_costs
  op = costs.op_seconds + costs.op_seconds_per_image * target.batch_size
  return op * costs.macs_per_second / target.batch_size


def strip_options(target, image_size_known=True, channel_reads=None):
  """`strip`'s layout options for `target`.

  Args:
    target: A `Target`.
    image_size_known: False for a model of variable image size, whose
      reads cannot be widened (the MACs of a gap are unknown).
    channel_reads: The read a caller chose (`"slice"`, `"split"` or
      `"gather"`), or None for the target's own (`"gather"` for ONNX
      Runtime, else `"slice"`). A gather is one op however many ranges a
      layer reads, so it is not widened by costs (`slice_cost_macs` 0;
      strip pads it to a multiple of 16 channels for ONNX Runtime's
      blocked convolutions); slices and splits are widened by the
      target's costs.

  Returns:
    A dict of `slice_cost_macs`, `channel_reads`, `max_concat_inputs`,
    `pool_first`, `reuse_concats` and `fused_batch_norm` (the Keras 3
    path takes those it has).

  Raises:
    TypeError: if `target` is not a `Target`.
  """
  if not isinstance(target, Target):
    raise TypeError(f"target must be a tfsdn.Target. Received: "
                    f"target={target!r}")
  litert = target.runtime.startswith("litert")
  # ONNX Runtime: one Gather per layer, run channels-first by `export_onnx`,
  # was faster than the slices its costs choose on trained DenseNet-40 and
  # DenseNet-121 at batch 1 and 32 (docs/deployment.md); TensorFlow and
  # XNNPACK gather channels-last slowly.
  reads = channel_reads or ("gather" if target.runtime == "onnx" else "slice")
  return dict(
      slice_cost_macs=(slice_cost_macs(target)
                       if image_size_known and reads != "gather" else 0),
      channel_reads=reads,
      # XNNPACK runs CONCATENATION up to 5 inputs; larger ones split the
      # graph between it and LiteRT's own kernels.
      max_concat_inputs=5 if litert else None,
      # A transition's 1x1 conv on a quarter of the pixels (it commutes
      # with the 2x2 average pooling after it): in ONNX Runtime too, 7-9%
      # faster with gathers on trained DenseNet-40 and -121 at batch 1 and
      # 32 (docs/deployment.md).
      pool_first=True,
      # A running concatenation: fewer, larger concatenation inputs; in
      # ONNX Runtime, where concatenations copy whole planes, slower.
      reuse_concats=target.runtime != "onnx",
      # oneDNN's fused kernel is slow for channel counts that are not a
      # multiple of 4. LiteRT converts both alike; tf2onnx turns an unfused
      # one into a Mul and an Add instead of one BatchNormalization.
      fused_batch_norm=target.runtime == "onnx")


def resolve_options(target, given, image_size_known=True):
  """`strip`'s layout options: `given` ones, the rest from `target`.

  Args:
    target: A `Target`, or None for `DEFAULT_TARGET`.
    given: Dict of the options the caller passed (None: not passed), keys
      of `strip_options`' result. A `slice_cost_macs` above 0 with no
      `channel_reads` reads by slices (an ONNX target's gathers would only
      add the widened reads' MACs).
    image_size_known: See `strip_options`.

  Returns:
    A dict with every key that `given` has.

  Raises:
    TypeError: if `target` is neither a `Target` nor None.
  """
  if target is not None and not isinstance(target, Target):
    raise TypeError(f"target must be a tfsdn.Target or None. Received: "
                    f"target={target!r}")
  reads = given.get("channel_reads")
  if reads is None and given.get("slice_cost_macs"):
    # A width asked for: only slices are widened by costs (a gather is not).
    reads = "slice"
  chosen = strip_options(target or DEFAULT_TARGET, image_size_known, reads)
  return {name: chosen[name] if value is None else value
          for name, value in given.items()}
