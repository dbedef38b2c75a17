r"""What a BatchNormalization's channel count costs in plain TensorFlow.

Times DenseNet blocks of BatchNormalization -> ReLU -> Conv2D layers, each
reading the concatenation of the block's input and every earlier layer's
output (channels: --first, then +--growth per layer), built with fused
(Keras' default) and unfused (`fused=False`) BatchNormalization, side by
side in one process: interleaved rounds, median. A `--first` and
`--growth` that are multiples of 4 give every layer a channel count that is
a multiple of 4, as a dense DenseNet has; other values give the counts a
pruned layer has. `tfsdn.strip(..., fused_batch_norm=False)` builds the
unfused kind.

  python benchmarks/batch_norm_channels.py \
      --blocks=16:12,17:12,13:12,18:12,20:12,16:8,15:8 \
      --output=docs/batch_norm_channels.json
"""

import os

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from tfsdn.compat import keras
from tfsdn.files import write_json
from runtime_timing import interleaved_rounds

FLAGS = flags.FLAGS


def _define_flags():
  # Defined only when run as a script, so tests can import `parse_block`
  # next to deploy_speed, whose flags share some of these names.
  flags.DEFINE_list("blocks", ["16:12", "17:12", "13:12", "18:12"],
                    "FIRST:GROWTH of each block timed: the channels of the "
                    "block's input and of each layer's output.")
  flags.DEFINE_integer("layers", 12, "Layers per block.")
  flags.DEFINE_integer("size", 32, "Height and width of the feature maps.")
  flags.DEFINE_integer("batch_size", 1, "Images per call.")
  flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.")
  flags.DEFINE_float("seconds", 0.6, "Seconds per block per round.")
  flags.DEFINE_string("output", "docs/batch_norm_channels.json",
                      "JSON results.")


def parse_block(value):
  """`"FIRST:GROWTH"` as two positive ints; a ValueError names `value`."""
  try:
    first, growth = (int(v) for v in value.split(":"))
  except ValueError:
    first = growth = 0
  if first < 1 or growth < 1:
    raise ValueError("A block is FIRST:GROWTH, two positive integers. "
                     f"Received: {value!r}")
  return first, growth


def block(first, growth, layers, size, fused):
  """A DenseNet block on a `first`-channel input, BatchNormalization fused
  (Keras' default) or not, with random weights and statistics."""
  inputs = keras.Input((size, size, first))
  x = inputs
  rng = np.random.default_rng(0)
  for _ in range(layers):
    norm = keras.layers.BatchNormalization(fused=None if fused else False)
    y = keras.layers.ReLU()(norm(x))
    y = keras.layers.Conv2D(growth, 3, padding="same", use_bias=False)(y)
    norm.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                      for w in norm.get_weights()])
    x = keras.layers.Concatenate()([x, y])
  return keras.Model(inputs, x)


def main(argv):
  del argv
  blocks = [parse_block(value) for value in FLAGS.blocks]
  serve = {}
  for first, growth in blocks:
    images = tf.constant(np.random.default_rng(1).uniform(
        size=(FLAGS.batch_size, FLAGS.size, FLAGS.size, first)).astype(
            "float32"))
    weights, outputs = None, []
    for fused in (True, False):
      model = block(first, growth, FLAGS.layers, FLAGS.size, fused)
      if weights is None:
        weights = model.get_weights()
      model.set_weights(weights)  # The same block, fused or not.
      outputs.append(model(images, training=False).numpy())
      function = tf.function(lambda x, m=model: m(x, training=False))
      name = f"{first}:{growth}/{'fused' if fused else 'unfused'}"
      # Each block times its own input; the batch argument only sizes it.
      serve[name] = lambda _, f=function, x=images: f(x).numpy()
    np.testing.assert_allclose(*outputs, rtol=1e-4, atol=1e-4)
  speed = interleaved_rounds(serve, {FLAGS.batch_size: None}, FLAGS.rounds,
                             FLAGS.seconds)
  ms = {name: 1e3 * b / value for (name, b), value in speed.items()}
  results = {"tensorflow": tf.__version__, "cpus": os.cpu_count(),
             "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
             "layers": FLAGS.layers, "size": FLAGS.size,
             "batch_size": FLAGS.batch_size, "rounds": FLAGS.rounds,
             "ms_per_call": ms, "channels": {}}
  print("| block (first:growth) | channel counts | fused ms | unfused ms |")
  print("| --- | --- | --- | --- |")
  for first, growth in blocks:
    counts = [first + growth * i for i in range(FLAGS.layers)]
    results["channels"][f"{first}:{growth}"] = counts
    fused, unfused = (ms[f"{first}:{growth}/{kind}"]
                      for kind in ("fused", "unfused"))
    aligned = "all multiples of 4" if all(c % 4 == 0 for c in counts) else (
        f"{sum(c % 4 != 0 for c in counts)} of {len(counts)} not multiples "
        "of 4")
    print(f"| {first}:{growth} | {aligned} | {fused:.2f} | {unfused:.2f} |")
  write_json(FLAGS.output, results)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
