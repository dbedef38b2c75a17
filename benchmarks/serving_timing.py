"""Timing and memory of exported SavedModels, shared by the benchmarks.

Models are loaded as TF Serving would load them (`tf.saved_model.load`, the
`serving_default` signature) and timed in interleaved rounds, so that the
noise of a shared machine hits every model alike.
"""

import os
import subprocess
import sys

from absl import logging
import tensorflow as tf

from runtime_timing import interleaved_rounds
from runtime_timing import random_images

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
  inputs = {b: tf.constant(images) for b, images in
            random_images(batch_sizes, image_shape).items()}
  return interleaved_rounds(
      {name: lambda x, serve=serve: serve(images=x)["logits"].numpy()
       for name, serve in functions.items()}, inputs, rounds, seconds,
      log=lambda r, n: logging.info("round %d/%d done", r, n))


