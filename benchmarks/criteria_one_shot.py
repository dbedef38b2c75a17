r"""Which input channels does each criterion pick? A one-shot comparison.

Trains the `dense` arm of the accuracy benchmark (same flags, same recipe, same
held-out validation set), then, with no further training, prunes a fraction
of every layer's input channels chosen by each criterion and measures the
accuracy left on the held-out validation set (never the test split). This
separates the quality of a criterion's choice from the training dynamics of
staged pruning: a criterion that picks well loses less accuracy here.

Criteria compared, all `score_i * sum|W[:, :, i, :]|` or plain scores:
  expected_l1   E|x_i| (the layer's training-time moving average) * L1(W_i)
  centered_l1   E|x_i - E x_i| * L1(W_i): the part of the contribution that
                is not a constant offset (a constant is removed again by the
                BatchNormalization of every layer that reads the output)
  weight_l1     L1(W_i)                      (CondenseNet)
  bn_gamma      |gamma_i|                    (Network Slimming)
  random        uniform random scores (mean over --random_repeats draws)

  python benchmarks/criteria_one_shot.py \
      --dataset=tfrecord:../shared/data/cifar10 --output_dir=/tmp/one_shot

Writes OUTPUT_DIR/one_shot.json and prints a Markdown table. The trained
dense weights are kept in OUTPUT_DIR/dense.weights.h5, so a re-run with the
same flags skips the training.
"""

import os

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import experiment
import tfsdn
from tfsdn import criteria
from tfsdn import recipe
from tfsdn.compat import keras
from tfsdn.files import atomic_path
from tfsdn.files import write_json

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiment)  # --help lists the training flags.
flags.DEFINE_list("sparsities", ["0.1667", "0.3333", "0.5"],
                  "Per-layer input-channel sparsities to evaluate.")
flags.DEFINE_integer("random_repeats", 3, "Random draws averaged.")
flags.DEFINE_integer("stats_batches", 8,
                     "Training batches used to measure E|x - E x|.")
flags.DEFINE_integer("recalibration_batches", 30,
                     "Training batches that re-estimate the BatchNorm moving "
                     "statistics after pruning (0: keep the dense ones).")

CRITERIA = ("expected_l1", "centered_l1", "weight_l1", "bn_gamma", "random")


def trained_dense(config, data):
  """The dense arm, trained once and cached in OUTPUT_DIR."""
  model = experiment.build_densenet(config, "expected_l1")
  path = os.path.join(FLAGS.output_dir, "dense.weights.h5")
  if os.path.exists(path):
    logging.info("Loading the trained dense model from %s", path)
    model.load_weights(path)
    return model
  recipe.compile_for_training(model, config["learning_rate"],
                              config["jit_compile"])
  model.fit(data.train, epochs=config["epochs"], verbose=2,
            callbacks=[keras.callbacks.LearningRateScheduler(
                recipe.step_decay(config["learning_rate"],
                                  config["epochs"]))])
  with atomic_path(path, suffix=".weights.h5") as tmp:
    model.save_weights(tmp)
  return model


def centered_abs_means(model, layers, data):
  """E|x_i - E x_i| of every layer's post-BN-ReLU input, inference mode."""
  probe = keras.Model(model.inputs, [layer.input for layer in layers])
  sums = [0.0] * len(layers)
  batches = []
  for images, _ in data.train.take(FLAGS.stats_batches):
    outputs = probe(images, training=False)
    outputs = outputs if len(layers) > 1 else [outputs]
    post = []
    for layer, inputs in zip(layers, outputs):
      inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
      x = tf.concat(inputs, -1) if len(inputs) > 1 else inputs[0]
      post.append(tf.nn.relu(layer.batch_norm(x, training=False)))
    batches.append(post)
  for i in range(len(layers)):
    x = tf.concat([batch[i] for batch in batches], 0)
    mean = tf.reduce_mean(x, axis=[0, 1, 2])
    sums[i] = tf.reduce_mean(tf.abs(x - mean), axis=[0, 1, 2]).numpy()
  return sums


def raw_scores(criterion, layer, centered, rng):
  if criterion == "expected_l1":
    return layer.raw_scores().numpy()
  if criterion == "centered_l1":
    return criteria.expected_l1_scores(centered, layer.conv.kernel).numpy()
  if criterion == "weight_l1":
    return criteria.weight_l1_scores(layer.conv.kernel).numpy()
  if criterion == "bn_gamma":
    return criteria.bn_gamma_scores(layer.batch_norm.gamma).numpy()
  return rng.uniform(0.05, 1.0, layer.input_channels)


def keep_top(scores, sparsity):
  """A 0/1 mask keeping the channels tfmot would keep at `sparsity`."""
  keep = int(round(scores.size * (1.0 - sparsity)))
  mask = np.zeros(scores.size)
  mask[np.argsort(-scores, kind="stable")[:keep]] = 1.0
  return mask


def recalibrate_batch_norm(model, data, batches):
  """Re-estimates every BatchNorm's moving statistics on training batches.

  Pruning an input channel also removes its mean from every output, so the
  moving statistics of the BatchNorms downstream are stale; fine-tuning
  would re-estimate them at once. Only the statistics change (no gradient
  step); the masks stay as they are.
  """
  if not batches:
    return
  norms = [layer for layer in model.submodules
           if isinstance(layer, keras.layers.BatchNormalization)]
  momenta = [norm.momentum for norm in norms]
  for norm in norms:
    norm.momentum = 0.8
  for images, _ in data.take(batches):
    model(images, training=True)
  for norm, momentum in zip(norms, momenta):
    norm.momentum = momentum


def source_shares(layers, masks):
  """Pruned fraction of the block input vs. the newest layer's output."""
  oldest, newest = [], []
  for layer, mask in zip(layers, masks):
    counts = layer.input_channel_counts
    if len(counts) < 2:
      continue
    oldest.append(1.0 - mask[:counts[0]].mean())
    newest.append(1.0 - mask[-counts[-1]:].mean())
  return float(np.mean(oldest)), float(np.mean(newest))


def main(argv):
  del argv
  config = experiment.training_config()
  try:
    sparsities = [float(s) for s in FLAGS.sparsities]
  except ValueError:
    sparsities = None
  if not sparsities or not all(0.0 < s < 1.0 for s in sparsities):
    raise app.UsageError("--sparsities must be numbers in (0, 1). Received: "
                         f"{','.join(FLAGS.sparsities)!r}")
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  data = experiment.Data(config)
  if data.validation is None:
    raise app.UsageError("Needs --validation_size > 0: criteria are compared "
                         "on held-out training images, never on the test set.")
  model = trained_dense(config, data)
  layers = tfsdn.prunable_layers(model)
  centered = centered_abs_means(model, layers, data)
  trained = model.get_weights()
  results = {"dense_validation_accuracy": experiment.accuracy(
      model, data.validation),
             "recalibration_batches": FLAGS.recalibration_batches,
             "config": config, "criteria": {}}
  for criterion in CRITERIA:
    repeats = FLAGS.random_repeats if criterion == "random" else 1
    rows = {}
    for sparsity in sparsities:
      accs, shares = [], []
      for repeat in range(repeats):
        rng = np.random.default_rng(repeat)
        model.set_weights(trained)
        masks = [keep_top(raw_scores(criterion, layer, c, rng), sparsity)
                 for layer, c in zip(layers, centered)]
        for layer, mask in zip(layers, masks):
          layer.contribution_score.assign(mask.astype(np.float32))
        recalibrate_batch_norm(model, data.train,
                               FLAGS.recalibration_batches)
        accs.append(experiment.accuracy(model, data.validation))
        shares.append(source_shares(layers, masks))
      rows[str(sparsity)] = {
          "validation_accuracy": float(np.mean(accs)),
          "validation_accuracy_draws": accs,
          "pruned_share_block_input": float(np.mean([s[0] for s in shares])),
          "pruned_share_newest_input": float(np.mean([s[1] for s in shares])),
      }
      logging.info("%s @ %.3f: %.4f", criterion, sparsity, np.mean(accs))
    results["criteria"][criterion] = rows
  model.set_weights(trained)

  write_json(os.path.join(FLAGS.output_dir, "one_shot.json"), results)
  lines = [f"Dense: {results['dense_validation_accuracy']:.2%} validation "
           f"accuracy ({data.validation_examples} held-out images); "
           f"BatchNorm statistics re-estimated on "
           f"{FLAGS.recalibration_batches} batches after pruning.", "",
           "| criterion | " + " | ".join(
               f"acc. @ {s:.2f}" for s in sparsities) +
           " | pruned share of block input / newest input @ "
           f"{sparsities[-1]:.2f} |",
           "| --- |" + " ---: |" * (len(sparsities) + 1)]
  for criterion, rows in results["criteria"].items():
    last = rows[str(sparsities[-1])]
    lines.append(f"| {criterion} | " + " | ".join(
        f"{rows[str(s)]['validation_accuracy']:.2%}" for s in sparsities) +
                 f" | {last['pruned_share_block_input']:.2f} / "
                 f"{last['pruned_share_newest_input']:.2f} |")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
