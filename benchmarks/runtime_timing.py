r"""Timing exported models, shared by the speed benchmarks.

Models are timed in interleaved rounds (median of the rounds), so that the
noise of a shared machine hits every model alike: `time_rounds` times
serving functions in this process; `time_in_child` times the models of one
runtime in a fresh Python process that imports that runtime and nothing
else of the benchmark (TensorFlow only for the `tf`, `tf_xla` and
`tf_fusible` runtimes). A user serving ONNX Runtime or LiteRT does not have
TensorFlow in the same process, and thread pools of other runtimes
(TensorFlow's, XNNPACK's, another ONNX Runtime session's) waking between
calls do not slow the model they serve. This module imports no TensorFlow
at its top (`time_rounds` does, when called).

`tf_fusible` is the plain SavedModel with TensorFlow's XLA auto-clustering
on for fusible ops only (`FUSIBLE_XLA_FLAGS` in the child's environment):
XLA fuses the slices, concatenations, batch norms and ReLUs between two
convolutions into one kernel, and oneDNN runs the convolutions.

Run as a script by `time_in_child`:

  python benchmarks/runtime_timing.py '{"runtime": "onnx", "models": {...},
      "batch_sizes": [1, 64], "rounds": 3, "seconds": 1.0, "threads": 2}'
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np


def _state(pid):
  """A process's state letter from /proc (None where unknown)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0]
  except (OSError, IndexError):
    return None


def pause_pids(values, flag="--pause_pids", running=True):
  """Process ids to pause, as ints; a ValueError names a bad value.

  Only a single process > 1 that is not this one (and, with `running`,
  exists): 0 and negative ids would signal whole process groups, 1 is init.
  """
  pids = []
  for value in values:
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) <= 1 or (
        int(text) == os.getpid()) or int(text) > 2**22:
      raise ValueError(f"{flag} takes ids of other running processes. "
                       f"Received: {value!r}")
    try:
      if running:
        os.kill(int(text), 0)
    except ProcessLookupError:
      raise ValueError(f"{flag}: no process {value!r} is running.") from None
    pids.append(int(text))
  return pids


class Paused:
  """Stops the processes `pids` (SIGSTOP) inside the block, resumes after.

  Every process stopped is resumed (SIGCONT) however the block ends, also
  when stopping a later one fails; a process that ended meanwhile (since
  its flag was checked) is skipped. `pids` are checked first (`pause_pids`,
  all but whether they still run).
  """

  def __init__(self, pids):
    self.pids = pause_pids(pids, running=False) if pids else []
    self.stopped = []

  def __enter__(self):
    try:
      for pid in self.pids:
        try:
          os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:  # Ended meanwhile: nothing to pause.
          continue
        self.stopped.append(pid)
      for pid in self.stopped:  # Stopped before the block times anything.
        deadline = time.monotonic() + 5
        while _state(pid) not in ("T", "t", None) and (
            time.monotonic() < deadline):
          time.sleep(0.01)
    except BaseException:
      self.__exit__()
      raise
    return self

  def __exit__(self, *exc):
    for pid in self.stopped:
      try:
        os.kill(pid, signal.SIGCONT)
      except ProcessLookupError:
        pass
    self.stopped = []


def litert_serve(path, threads):
  """`(serve, interpreter_for)` for a LiteRT model, one interpreter per batch.

  `serve(images)` returns the first output as numpy; `interpreter_for(b)`
  is the interpreter sized for batch `b` (made on first use).
  """
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreters = {}

  def interpreter_for(batch_size):
    if batch_size not in interpreters:
      interpreter = Interpreter(model_path=path, num_threads=threads)
      shape = interpreter.get_input_details()[0]["shape"]
      interpreter.resize_tensor_input(
          interpreter.get_input_details()[0]["index"],
          [batch_size] + list(shape[1:]))
      interpreter.allocate_tensors()
      interpreters[batch_size] = interpreter
    return interpreters[batch_size]

  def serve(images):
    images = np.asarray(images, np.float32)
    interpreter = interpreter_for(len(images))
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           images)
    interpreter.invoke()
    return interpreter.get_tensor(
        interpreter.get_output_details()[0]["index"])

  return serve, interpreter_for


def onnx_session(path, threads, profile_prefix=None):
  """An ONNX Runtime CPU session with `threads` intra-op threads.

  Args:
    path: The `.onnx` file.
    threads: Intra-op threads.
    profile_prefix: If given, ONNX Runtime's profiler is on and writes its
      trace to a JSON file named with this prefix (`session.end_profiling()`
      returns the name).
  """
  import onnxruntime  # pylint: disable=g-import-not-at-top
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  if profile_prefix:
    options.enable_profiling = True
    options.profile_file_prefix = profile_prefix
  return onnxruntime.InferenceSession(path, options,
                                      providers=["CPUExecutionProvider"])


def _onnx_serve(path, threads):
  session = onnx_session(path, threads)
  name = session.get_inputs()[0].name
  return lambda images: session.run(None, {name: images})[0]


def _tf_serve(path, threads):
  del threads  # The SavedModel runs with TensorFlow's default thread pools.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(path).signatures["serving_default"]
  return lambda images: serve(images=tf.constant(images))["logits"].numpy()


def _litert_serve(path, threads):
  return litert_serve(path, threads)[0]


# TF_XLA_FLAGS of the `tf_fusible` runtime: auto-clustering (read when
# TensorFlow starts) of the ops XLA fuses well, not of convolutions.
FUSIBLE_XLA_FLAGS = ("--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit "
                     "--tf_xla_ops_to_cluster=FUSIBLE")
_ENVIRONMENT = {"tf_fusible": {"TF_XLA_FLAGS": FUSIBLE_XLA_FLAGS}}
_SERVERS = {"tf": _tf_serve, "tf_xla": _tf_serve, "tf_fusible": _tf_serve,
            "litert": _litert_serve,
            "litert_f16": _litert_serve, "litert_int8": _litert_serve,
            "onnx": _onnx_serve}
RUNTIMES = tuple(_SERVERS)


def interleaved_rounds(functions, inputs, rounds, seconds, log=None):
  """Images/second per (name, batch size): median over interleaved rounds.

  Args:
    functions: Name -> function of one batch, returning a finished result.
    inputs: Batch size -> the batch passed to every function.
    rounds: Rounds; each times every function and batch size once.
    seconds: Seconds per function, batch size and round.
    log: Called with (round, rounds) after each round, if given.

  Returns:
    A dict from `(name, batch_size)` to the median images/second.
  """
  for serve in functions.values():  # Warm up (and compile, for XLA).
    for batch in inputs.values():
      for _ in range(2):
        serve(batch)
  samples = {(name, b): [] for name in functions for b in inputs}
  for r in range(rounds):
    for b, batch in inputs.items():
      for name, serve in functions.items():
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
          serve(batch)
          count += 1
        samples[(name, b)].append(count * b / (time.perf_counter() - start))
    if log:
      log(r + 1, rounds)
  return {key: float(np.median(v)) for key, v in samples.items()}


def random_images(batch_sizes, image_shape=(32, 32, 3)):
  """Batch size -> float32 images in [0, 255), the same in every process."""
  rng = np.random.default_rng(0)
  return {b: rng.uniform(0, 255, (b,) + tuple(image_shape)).astype("float32")
          for b in batch_sizes}


def time_rounds(functions, batch_sizes, rounds, seconds,
                image_shape=(32, 32, 3)):
  """Images/second per (model, batch size), timed in this process.

  Args:
    functions: Name -> serving function taking `images` (a TF SavedModel's
      `serving_default` signature, or one like it), returning a dict whose
      `logits` has `.numpy()`.
    batch_sizes: Batch sizes to time.
    rounds: Rounds; each times every model and batch size once.
    seconds: Seconds per model, batch size and round.
    image_shape: Shape of one input image.

  Returns:
    A dict from `(name, batch_size)` to the median images/second.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  inputs = {b: tf.constant(images) for b, images in
            random_images(batch_sizes, image_shape).items()}
  return interleaved_rounds(
      {name: lambda x, serve=serve: serve(images=x)["logits"].numpy()
       for name, serve in functions.items()}, inputs, rounds, seconds,
      log=lambda r, n: logging.info("round %d/%d done", r, n))


def time_in_child(runtime, models, batch_sizes, rounds, seconds, threads,
                  image_shape=(32, 32, 3)):
  """Times `models` of one runtime in a fresh process that loads only it.

  Args:
    runtime: One of `RUNTIMES`.
    models: Name -> path of the model exported for `runtime`.
    batch_sizes: Batch sizes to time.
    rounds: Interleaved rounds.
    seconds: Seconds per model, batch size and round.
    threads: Threads of LiteRT and ONNX Runtime.
    image_shape: Shape of one input image.

  The child inherits this process's environment; for `tf_fusible`,
  `FUSIBLE_XLA_FLAGS` are added to any TF_XLA_FLAGS there.

  Returns:
    `(throughput, imported_tensorflow)`: a dict from `(name, batch_size)`
    to the median images/second, and whether the child imported TensorFlow.

  Raises:
    ValueError: for an unknown runtime.
    subprocess.CalledProcessError: if the child fails (its stderr shown).
  """
  if runtime not in _SERVERS:
    raise ValueError(f"runtime must be one of {RUNTIMES}. Received: "
                     f"runtime={runtime!r}")
  spec = {"runtime": runtime, "models": dict(models),
          "batch_sizes": [int(b) for b in batch_sizes], "rounds": int(rounds),
          "seconds": float(seconds), "threads": int(threads),
          "image_shape": [int(d) for d in image_shape]}
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  for name, flags in _ENVIRONMENT.get(runtime, {}).items():
    env[name] = " ".join(filter(None, [env.get(name), flags]))  # Yours too.
  done = subprocess.run(
      [sys.executable, os.path.abspath(__file__), json.dumps(spec)],
      capture_output=True, text=True, check=False, env=env)
  if done.returncode:
    raise subprocess.CalledProcessError(done.returncode, done.args,
                                        done.stdout, done.stderr[-4000:])
  result = json.loads(done.stdout.strip().splitlines()[-1])
  throughput = {}
  for key, value in result["images_per_second"].items():
    name, batch = key.rsplit("@", 1)
    throughput[(name, int(batch))] = value
  return throughput, result["imported_tensorflow"]


def _main(spec):
  spec = json.loads(spec)
  functions = {name: _SERVERS[spec["runtime"]](path, spec["threads"])
               for name, path in spec["models"].items()}
  throughput = interleaved_rounds(
      functions, random_images(spec["batch_sizes"],
                               spec.get("image_shape", (32, 32, 3))),
      spec["rounds"],
      spec["seconds"],
      log=lambda r, n: print(f"{spec['runtime']}: round {r}/{n} done",
                             file=sys.stderr, flush=True))
  print(json.dumps({
      "images_per_second": {f"{n}@{b}": v for (n, b), v in throughput.items()},
      "imported_tensorflow": "tensorflow" in sys.modules}))


if __name__ == "__main__":
  _main(sys.argv[1])
