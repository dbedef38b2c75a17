"""Timing and memory of exported SavedModels, shared by the benchmarks.

Models are loaded as TF Serving would load them (`tf.saved_model.load`, the
`serving_default` signature) and timed in interleaved rounds, so that the
noise of a shared machine hits every model alike.
"""

import os
import subprocess
import sys
import time

from absl import logging
import numpy as np
import tensorflow as tf

_PEAK_MEMORY = """
import resource, sys
import numpy as np, psutil, tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
images = tf.constant(np.random.default_rng(0).uniform(
    0, 255, (int(sys.argv[2]), 32, 32, 3)).astype("float32"))
loaded = psutil.Process().memory_info().rss
for _ in range(3):
  serve(images=images)["logits"].numpy()
print(loaded, psutil.Process().memory_info().rss,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def memory_mb(path, batch_size):
  """RSS (MB) of a fresh process serving `path`.

  Returns:
    (RSS after loading, RSS after three batches, peak RSS of the process).
    TensorFlow's import sets a high peak of its own, so the growth from
    loading to serving is the figure that tells models apart.
  """
  out = subprocess.run(
      [sys.executable, "-c", _PEAK_MEMORY, path, str(batch_size)],
      check=True, capture_output=True, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).stdout.split()
  return tuple(int(v) / 2**20 for v in out[-3:])


def time_rounds(functions, batch_sizes, rounds, seconds,
                image_shape=(32, 32, 3)):
  """Images/second per (model, batch size): median over interleaved rounds.

  Args:
    functions: Name -> serving signature taking `images`, returning `logits`.
    batch_sizes: Batch sizes to time.
    rounds: Rounds; each times every model and batch size once.
    seconds: Seconds per model, batch size and round.
    image_shape: Shape of one input image.

  Returns:
    A dict from `(name, batch_size)` to the median images/second.
  """
  rng = np.random.default_rng(0)
  inputs = {b: tf.constant(rng.uniform(0, 255, (b,) + tuple(image_shape))
                           .astype("float32")) for b in batch_sizes}
  for serve in functions.values():  # Warm up (and compile, for XLA).
    for b in batch_sizes:
      for _ in range(2):
        serve(images=inputs[b])["logits"].numpy()
  samples = {(name, b): [] for name in functions for b in batch_sizes}
  for r in range(rounds):
    for b in batch_sizes:
      for name, serve in functions.items():
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
          serve(images=inputs[b])["logits"].numpy()
          count += 1
        samples[(name, b)].append(count * b / (time.perf_counter() - start))
    logging.info("round %d/%d done", r + 1, rounds)
  return {key: float(np.median(v)) for key, v in samples.items()}


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
