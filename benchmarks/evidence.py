r"""The evidence experiment: a shared trunk per seed, every arm branched from it.

For each seed the dense DenseNet is trained once up to where pruning begins
(the *trunk*, `--trunk_epochs`), snapshotted, and every arm (`arms.py`)
continues from that snapshot with the same data order, the same
augmentation and the same learning-rate schedule (`--learning_rate`,
divided by 10 at each of `--lr_drop_epochs`) up to `--epochs`. Pruning
stages fall on the branch's epochs `--prune_begin_epoch` to
`--prune_end_epoch` (counted from the first epoch after the trunk).
`narrow_dense`, `retrained` and `retrained_layer` train their own
architecture from scratch for all `--epochs`. Training is deterministic (`enable_op_determinism`, fixed
seeds): a rerun reproduces an arm bit for bit.

Each finished (arm, seed) writes OUTPUT_DIR/seedS/ARM.json (accuracies, the
prediction for every validation and test image, parameters, MACs, the stages)
and OUTPUT_DIR/seedS/ARM.keras (the compact model, stock tf_keras layers), and
for an arm that pruned connections OUTPUT_DIR/seedS/ARM.pruned.keras (its model
before the strip, loadable after `import tfsdn`, so that it can be stripped
again for another target without retraining), so results can be committed as
they land and re-evaluated on other data. Each
result records the git commit it ran from (`commit`, `commit_dirty`) and
where `tfsdn` was imported from (`tfsdn_path`); these are not part of the
config, so a folder's digest does not depend on them. To keep later library
changes out of a long run, run it from a worktree pinned at one commit
(`git worktree add --detach DIR COMMIT`, then run DIR's script from DIR
with PYTHONPATH=DIR, so that its `tfsdn` is imported rather than an
editable install's) and check `tfsdn_path`. A
restarted run skips what is done; an OUTPUT_DIR made with other flags is
refused. `evidence_table.py` turns OUTPUT_DIR into the table and plot.

The pilot on 2 CPU cores (see README.md, "Evidence"):

  python benchmarks/evidence.py --dataset=tfrecord:../shared/data/cifar10 \
      --output_dir=docs/evidence/cifar10_d16 --seeds=0

Paper scale, on a GPU:

  python benchmarks/evidence.py --dataset=cifar10 --depth=40 --epochs=300 \
      --trunk_epochs=30 --lr_drop_epochs=150,225 --prune_begin_epoch=0 \
      --prune_end_epoch=45 --train_size=0 --validation_size=5000 \
      --seeds=0,1,2,3,4 --output_dir=docs/evidence/cifar10_d40
"""

import hashlib
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

import arms as arms_lib
import experiment
import results_io

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiment)
flags.DEFINE_list("seeds", ["0"], "Seeds: one trunk each.")
flags.DEFINE_list(
    "arms", ["dense", "el1_global@0.45", "random_matched@0.45",
             "el1_layer@0.45", "bn_gamma_global@0.45",
             "weight_l1_global@0.45", "narrow_dense@0.45", "retrained@0.45",
             "el1_global@0.3", "tfmot_unstructured@0.45"],
    "Arms, KIND or KIND@KEEP (see arms.py), run in this order per seed.")
flags.DEFINE_integer("trunk_epochs", 2, "Dense epochs before the branches.")
flags.DEFINE_list("lr_drop_epochs", ["5", "7"],
                  "Epochs at which the learning rate is divided by 10.")
flags.DEFINE_float("floor", 0.1, "GlobalAllocation's floor per layer.")
flags.DEFINE_string("work_dir", "runs/evidence",
                    "Where the trunks go (not results; not committed).")
flags.DEFINE_integer("threads", 0,
                     "TensorFlow intra-op threads (0: TensorFlow decides).")
flags.DEFINE_bool("git_commit", False,
                  "git commit each (arm, seed) result as it lands.")
FLAGS.set_default("output_dir", "docs/evidence/cifar10_d16")
FLAGS.set_default("epochs", 8)
FLAGS.set_default("train_size", 10000)
FLAGS.set_default("validation_size", 5000)
FLAGS.set_default("num_stages", 2)
FLAGS.set_default("prune_begin_epoch", 0)
FLAGS.set_default("prune_end_epoch", 1)

# Flags that decide what an arm learns, besides experiment's.
_RUN_FLAGS = ("trunk_epochs", "lr_drop_epochs", "floor")
_NOT_RUN = ("seed", "final_sparsity")


def run_config():
  config = {k: v for k, v in experiment.training_config().items()
            if k not in _NOT_RUN}
  config.update({name: FLAGS[name].value for name in _RUN_FLAGS})
  config["lr_drop_epochs"] = [int(e) for e in config["lr_drop_epochs"]]
  return config


def check_flags(config):
  """Fails before any training on a flag value that cannot work."""
  experiment.check_training_flags(config)
  try:
    chosen = [arms_lib.parse(name) for name in FLAGS.arms]
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if not 1 <= config["trunk_epochs"] < config["epochs"]:
    raise app.UsageError(
        f"--trunk_epochs must be in [1, --epochs). Received: "
        f"{config['trunk_epochs']} with --epochs={config['epochs']}")
  _, end = arms_lib.stage_epochs(config)
  if config["trunk_epochs"] + end >= config["epochs"]:
    raise app.UsageError(
        f"The last stage (branch epoch {end}) must come before --epochs="
        f"{config['epochs']} - --trunk_epochs={config['trunk_epochs']}.")
  return arms_lib.ordered(chosen), seeds


def learning_rate(config):
  drops = config["lr_drop_epochs"]
  return lambda epoch, unused_lr=None: config["learning_rate"] * 0.1**sum(
      epoch >= d for d in drops)


class Runner:
  """Trains trunks and arms of one configuration; see the module docstring."""

  def __init__(self, config):
    # pylint: disable=g-import-not-at-top
    import tfsdn
    from tfsdn import data as sdn_data
    from tfsdn.compat import keras
    self.tfsdn, self.sdn_data, self.keras = tfsdn, sdn_data, keras
    self.config = config
    dataset, held_out = config["dataset"], config["validation_size"]
    self.data_dir = FLAGS.data_dir
    self.train_examples = sdn_data.count_examples(
        dataset, "train", config["train_size"] or None, self.data_dir,
        held_out)
    self.steps_per_epoch = -(-self.train_examples // config["batch_size"])
    self.validation = sdn_data.make_dataset(
        dataset, "train", 256, size=held_out, data_dir=self.data_dir)
    self.test = sdn_data.make_dataset(dataset, "test", 256,
                                      size=config["test_size"] or None,
                                      data_dir=self.data_dir)
    self.labels = {"validation": self._labels(self.validation),
                   "test": self._labels(self.test)}
    self.dense_macs = tfsdn.model_report(self.build(0, "expected_l1")
                                         ).total_macs

  @staticmethod
  def _labels(data):
    return np.concatenate([y.numpy() for _, y in data])

  def train_data(self, seed):
    config = self.config
    return self.sdn_data.make_dataset(
        config["dataset"], "train", config["batch_size"], training=True,
        size=config["train_size"] or None, offset=config["validation_size"],
        data_dir=self.data_dir, seed=seed)

  def build(self, seed, criterion, growth_rate=None):
    config = dict(self.config, seed=seed)
    if growth_rate:
      config["growth_rate"] = growth_rate
    return experiment.build_densenet(config, criterion)

  def fit(self, model, seed, initial_epoch, epochs, callbacks=()):
    from tfsdn import recipe  # pylint: disable=g-import-not-at-top
    recipe.compile_for_training(model, self.config["learning_rate"],
                                self.config["jit_compile"])
    self.keras.utils.set_random_seed(seed)  # augmentation draws
    start = time.time()
    history = model.fit(
        self.train_data(seed), initial_epoch=initial_epoch, epochs=epochs,
        verbose=2, callbacks=[self.keras.callbacks.LearningRateScheduler(
            learning_rate(self.config)), *callbacks])
    return time.time() - start, [float(v) for v in history.history["loss"]]

  def trunk(self, seed):
    """Path of the seed's trunk weights, training it first if needed."""
    directory = os.path.join(FLAGS.work_dir, results_io.digest(self.config)[:12],
                             f"seed{seed}")
    path = os.path.join(directory, "trunk.weights.h5")
    if not os.path.exists(path):
      logging.info("Seed %d: training the trunk (%d epochs)", seed,
                   self.config["trunk_epochs"])
      model = self.build(seed, "expected_l1")
      seconds, _ = self.fit(model, _data_seed(seed, "trunk"), 0,
                            self.config["trunk_epochs"])
      os.makedirs(directory, exist_ok=True)
      partial = path + ".partial.weights.h5"
      model.save_weights(partial)
      os.replace(partial, path)
      logging.info("Seed %d: trunk done in %.0f s", seed, seconds)
    return path

  def run(self, arm, seed, needed):
    """Trains one arm for one seed.

    Returns:
      (result dict, compact model, pruned model or None): the pruned model is
      the one with PrunableConcatConv layers (tfmot's wrappers removed),
      None for an arm without them.
    """
    tfsdn, keras, config = self.tfsdn, self.keras, self.config
    version = results_io.code_version()
    result = {"arm": arm.name, "kind": arm.kind, "keep": arm.keep,
              "seed": seed, "config_digest": results_io.digest(config),
              "machine": results_io.machine(),
              "commit": version["commit"], "commit_dirty": version["dirty"],
              "tfsdn_path": version["tfsdn"]}
    callbacks = []
    if arm.kind in arms_lib.FROM_SCRATCH:
      if arm.kind == "narrow_dense":
        growth = arms_lib.narrow_growth_rate(
            lambda k: self.build(seed, "expected_l1", k), arm.keep,
            config["growth_rate"])
        result["growth_rate"] = growth
        model = self.build(seed, "expected_l1", growth)
      else:
        stripped = keras.models.load_model(needed["model_path"])
        model = arms_lib.reinitialized(stripped, seed)
      initial_epoch, data_seed = 0, _data_seed(seed, "trunk")
    else:
      trunk = self.trunk(seed)
      keras.utils.set_random_seed(seed)
      model = self.build(seed, arm.criterion)
      model.load_weights(trunk)
      if arm.criterion == "random":
        rng = np.random.default_rng(seed)
        for layer in tfsdn.prunable_layers(model):
          layer.contribution_score.assign(
              rng.uniform(0.05, 1.0, layer.input_channels).astype("float32"))
      schedule = arms_lib.pruning_schedule(arm, model, config,
                                           self.steps_per_epoch, needed)
      if arm.kind == "tfmot_unstructured":
        sparsity = schedule.stages[-1][1]
        result["kernel_sparsity"] = sparsity
        model = arms_lib.unstructured(model, sparsity, config,
                                      self.steps_per_epoch)
        callbacks = [self._tfmot().sparsity.keras.UpdatePruningStep()]
      elif schedule is not None:
        model = tfsdn.prune_dense_connections(model, schedule)
        check = tfsdn.UpdateScores(nested=arm.kind == "el1_nested")
        callbacks = [self._tfmot().sparsity.keras.UpdatePruningStep(), check]
      initial_epoch, data_seed = config["trunk_epochs"], _data_seed(seed,
                                                                    "branch")
    seconds, loss = self.fit(model, data_seed, initial_epoch,
                             config["epochs"], callbacks)
    result.update(train_seconds=seconds, train_loss=loss)
    if any(isinstance(c, tfsdn.UpdateScores) for c in callbacks):
      result["stages"] = callbacks[-1].history
    model = self._tfmot().sparsity.keras.strip_pruning(model)
    pruned = None
    if any(layer.sparsity() > 0 for layer in tfsdn.prunable_layers(model)):
      pruned = model
    if tfsdn.prunable_layers(model):
      result["layer_sparsity"] = {
          layer.name: layer.sparsity()
          for layer in tfsdn.prunable_layers(model)}
      # Exact reads: the MACs the arms' budgets are about.
      compact = tfsdn.strip(model, slice_cost_macs=0, pool_first=False).model
    else:
      compact = model
    report = tfsdn.model_report(compact)
    zero_macs = arms_lib.zero_weight_macs(compact)
    result.update(
        params=report.total_params, macs=report.total_macs - zero_macs,
        macs_computed=report.total_macs, dense_macs=self.dense_macs,
        macs_vs_dense=(report.total_macs - zero_macs) / self.dense_macs,
        train_examples=self.train_examples,
        weights_sha256=hashlib.sha256(b"".join(
            w.tobytes() for w in compact.get_weights())).hexdigest())
    for split, data in (("validation", self.validation), ("test", self.test)):
      predicted = np.argmax(compact.predict(data, verbose=0), -1)
      result[f"{split}_accuracy"] = float(np.mean(
          predicted == self.labels[split]))
      result[f"{split}_predictions"] = results_io.encode(predicted)
      result[f"{split}_examples"] = int(len(predicted))
    return result, compact, pruned

  @staticmethod
  def _tfmot():
    import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top
    return tfmot


def _data_seed(seed, part):
  return 1000 * seed + (1 if part == "trunk" else 2)


def main(argv):
  del argv
  config = run_config()
  chosen, seeds = check_flags(config)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if FLAGS.threads:
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
  tf.config.experimental.enable_op_determinism()
  try:
    results_io.prepare_output_dir(FLAGS.output_dir, config)
  except results_io.ConfigMismatch as e:
    raise app.UsageError(str(e)) from None
  version = results_io.code_version()
  logging.info("Code: commit %s%s, tfsdn from %s", version["commit"],
               " (tracked files changed since)" if version["dirty"] else "",
               version["tfsdn"])
  runner = Runner(config)
  labels_path = os.path.join(FLAGS.output_dir, "labels.json")
  if not os.path.exists(labels_path):
    from tfsdn.files import write_json  # pylint: disable=g-import-not-at-top
    write_json(labels_path, {split: results_io.encode(values)
                             for split, values in runner.labels.items()})
  logging.info("%d training images, %d steps per epoch, dense MACs %d",
               runner.train_examples, runner.steps_per_epoch,
               runner.dense_macs)
  for seed in seeds:
    directory = os.path.join(FLAGS.output_dir, f"seed{seed}")
    for arm in chosen:
      path = os.path.join(directory, f"{arm.name}.json")
      if os.path.exists(path):
        logging.info("%s, seed %d: done (%s)", arm.name, seed, path)
        continue
      needed = None
      if arm.needs:
        with open(os.path.join(directory, f"{arm.needs.name}.json")) as f:
          needed = json.load(f)
      logging.info("%s, seed %d: training", arm.name, seed)
      result, compact, pruned = runner.run(arm, seed, needed)
      written = results_io.save_result(result, compact, directory, arm.name,
                                       pruned)
      logging.info("%s, seed %d: validation %.4f, test %.4f, %.3fx MACs",
                   arm.name, seed, result["validation_accuracy"],
                   result["test_accuracy"], result["macs_vs_dense"])
      if FLAGS.git_commit:
        results_io.git_commit(written + [os.path.join(FLAGS.output_dir, "config.json"),
                              labels_path],
                   f"Evidence: {arm.name}, seed {seed} (test "
                   f"{result['test_accuracy']:.4f}, "
                   f"{result['macs_vs_dense']:.3f}x MACs)")


if __name__ == "__main__":
  app.run(main)
