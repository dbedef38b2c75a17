"""Measures a runtime's `RuntimeCosts` on this machine, cached on disk.

Opt-in: `strip(model, target=tfsdn.calibrate("litert", batch_size=1))`.
Four small tf_keras models over one feature map (16x16, 96 channels) are
timed in the target runtime, interleaved, median of rounds:

- `full`: BatchNormalization -> ReLU -> 3x3 Conv2D of 12 filters reading
  all 96 channels;
- `sliced` and `two`: the same after 8 (or 2) slices of the 96 channels and
  their concatenation: the same channels copied, 6 more slices and
  concatenation inputs;
- `half`: the same reading a 48-channel slice (half the MACs).

`op_seconds` is (sliced - two) / 6 and `macs_per_second` is the MACs
`half` saves over the time it saves. A caveat for ONNX Runtime: there a
slice timed alone costs about 2 us, yet on a whole DenseNet-40 exact reads
ran faster than reads widened for that cost, so its built-in costs (exact
reads) are the better default. Results are cached in a JSON file
(`$TFSDN_CACHE_DIR`, else `~/.cache/tfsdn`) keyed by runtime, batch size
and the versions of TensorFlow and the runtime, written atomically.
"""

import dataclasses
import json
import os
import platform
import statistics
import time

import numpy as np

from tfsdn import files
from tfsdn.common.deploy_target import RuntimeCosts
from tfsdn.common.deploy_target import Target

_SIZE, _CHANNELS, _FILTERS, _PIECES = 16, 96, 12, 8


def cache_path():
  """The JSON file calibrations are cached in."""
  root = os.environ.get("TFSDN_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "tfsdn")
  return os.path.join(root, "calibration.json")


def _models():
  from tfsdn.compat import keras  # pylint: disable=g-import-not-at-top
  layers = keras.layers

  def head(x, name):
    x = layers.BatchNormalization(fused=False, name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    return layers.Conv2D(_FILTERS, 3, padding="same", use_bias=False,
                         name=f"{name}_conv")(x)

  def build(name, reads):
    inputs = keras.Input((_SIZE, _SIZE, _CHANNELS), name="images")
    return keras.Model(inputs, head(reads(inputs), name), name=name)

  def pieces(count):
    step = _CHANNELS // count
    return lambda x: layers.Concatenate()(
        [x[..., i:i + step] for i in range(0, _CHANNELS, step)])

  return {
      "full": build("full", lambda x: x),
      "sliced": build("sliced", pieces(_PIECES)),
      "two": build("two", pieces(2)),
      "half": build("half", lambda x: x[..., :_CHANNELS // 2]),
  }


def _runners(runtime, models, batch_size, threads):
  """Name -> function of a batch, for `runtime`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if runtime in ("tf", "tf_xla"):
    runners = {}
    for name, model in models.items():
      fn = tf.function(lambda x, m=model: m(x, training=False),
                       jit_compile=runtime == "tf_xla")
      runners[name] = lambda x, fn=fn: fn(tf.constant(x)).numpy()
    return runners
  if runtime.startswith("litert"):
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
    runners = {}
    for name, model in models.items():
      converter = tf.lite.TFLiteConverter.from_keras_model(model)
      if runtime == "litert_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [np.random.default_rng(i).normal(
                size=(1, _SIZE, _SIZE, _CHANNELS)).astype("float32")]
            for i in range(8))
      interpreter = Interpreter(model_content=converter.convert(),
                                num_threads=threads)
      runners[name] = _litert_runner(interpreter, batch_size)
    return runners
  import onnxruntime  # pylint: disable=g-import-not-at-top
  import tf2onnx  # pylint: disable=g-import-not-at-top
  runners = {}
  for name, model in models.items():
    spec = (tf.TensorSpec((None, _SIZE, _SIZE, _CHANNELS), tf.float32,
                          name="images"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec,
                                          opset=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), options,
        providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    runners[name] = lambda x, s=session, n=input_name: s.run(None, {n: x})
  return runners


def _litert_runner(interpreter, batch_size):
  detail = interpreter.get_input_details()[0]
  interpreter.resize_tensor_input(
      detail["index"], [batch_size, _SIZE, _SIZE, _CHANNELS])
  interpreter.allocate_tensors()
  detail = interpreter.get_input_details()[0]
  scale, zero = detail["quantization"]

  def run(x):
    if detail["dtype"] != np.float32:
      x = np.clip(np.round(x / scale + zero), -128, 127).astype(
          detail["dtype"])
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
  return run


def _median_seconds(runners, batch, rounds, seconds):
  """Median seconds per call of each runner over interleaved rounds."""
  times = {name: [] for name in runners}
  for run in runners.values():
    run(batch)  # Warm-up (tracing, allocation).
  for _ in range(rounds):
    for name, run in runners.items():
      calls, start = 0, time.perf_counter()
      while True:
        run(batch)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
          break
      times[name].append(elapsed / calls)
  return {name: statistics.median(t) for name, t in times.items()}


def _key(runtime, batch_size):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  versions = [f"tf{tf.__version__}"]
  for module in ({"litert": "ai_edge_litert", "litert_int8": "ai_edge_litert",
                  "onnx": "onnxruntime"}.get(runtime),):
    if module:
      try:
        versions.append(f"{module}{__import__(module).__version__}")
      except (ImportError, AttributeError):
        versions.append(module)
  return "|".join([runtime, f"b{batch_size}", platform.machine(),
                   f"cpus{os.cpu_count()}", *versions])


def _read_cache(path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def calibrate(runtime, batch_size=1, rounds=5, seconds=0.3, threads=2,
              refresh=False):
  """A `Target` for `runtime` with costs measured on this machine.

  The first call for a runtime, batch size and set of versions times the
  three models (a few seconds for TensorFlow; the conversions add seconds
  for LiteRT and ONNX Runtime); later calls read the cache. An `"onnx"`
  target reads channels with one gather per layer whatever its
  costs (`tfsdn.common.deploy_target.strip_options`): its measured costs
  lay out only slices or splits asked for (`channel_reads=` or a
  `slice_cost_macs` above 0).

  Args:
    runtime: One of `tfsdn.common.deploy_target.RUNTIMES`.
    batch_size: The batch size to serve, an int >= 1.
    rounds: Interleaved timing rounds (the median is kept).
    seconds: Seconds per model per round.
    threads: Threads of LiteRT and ONNX Runtime.
    refresh: If True, measure again even if the cache has a result.

  Returns:
    A `Target(runtime, batch_size, costs=...)`.

  Raises:
    ValueError: for an unknown runtime or a bad batch size (from `Target`).
    RuntimeError: if the measurement is too noisy to give costs (no time
      saved by half the MACs); run it again on a quieter machine.
  """
  Target(runtime, batch_size)  # Checks the arguments.
  path = cache_path()
  key = _key(runtime, batch_size)
  cache = _read_cache(path)
  if key in cache and not refresh:
    return Target(runtime, batch_size, RuntimeCosts(**cache[key]))
  models = _models()
  batch = np.random.default_rng(0).normal(
      size=(batch_size, _SIZE, _SIZE, _CHANNELS)).astype("float32")
  times = _median_seconds(_runners(runtime, models, batch_size, threads),
                          batch, rounds, seconds)
  saved = times["full"] - times["half"]
  if saved <= 0:
    raise RuntimeError(
        f"Calibrating {runtime!r} at batch {batch_size}: reading half the "
        f"channels saved no time ({times}); the machine is too noisy.")
  macs = 9 * _FILTERS * _SIZE * _SIZE * (_CHANNELS - _CHANNELS // 2)
  costs = RuntimeCosts(
      op_seconds=max(0.0, (times["sliced"] - times["two"]) / (_PIECES - 2)),
      macs_per_second=macs * batch_size / saved)
  cache = _read_cache(path)  # Another process may have written meanwhile.
  cache[key] = dataclasses.asdict(costs)
  files.write_json(path, cache)  # Atomic, with the user's umask.
  return Target(runtime, batch_size, costs)

