r"""The evidence experiment on the Keras 3 path, for a JAX (GPU) machine.

The same design as `evidence.py` (one dense trunk per seed, every arm
branched from it with the same data order and learning-rate schedule,
`narrow_dense` and `retrained` from scratch) and the same output (one JSON
per (arm, seed) with every validation and test prediction, and the compact
model as `.keras`), so `evidence_table.py` reads both. It runs on the Keras
3 path (`tfsdn.keras3`) and needs neither TensorFlow nor tfmot: the data
come from the CIFAR TFRecords through `tfsdn.keras3.data` and are held in
memory, so on a GPU the input pipeline is not the bottleneck.

Arms: every arm of `arms.py` except `tfmot_unstructured` (tfmot prunes
tf_keras models only). Results go to their own folder: they are a
different implementation, and `evidence_table.py` compares arms within one
folder only.

Determinism: a rerun reproduces an arm on the same machine and backend
(JAX on CPU is deterministic; on GPU the script sets XLA's deterministic
ops flag before JAX loads).

Rehearsal on CPU (about 6 minutes on 2 cores):

  python benchmarks/evidence_keras3.py --backend=jax \
      --dataset=tfrecord:../shared/data/cifar10 --output_dir=/tmp/rehearsal \
      --depth=10 --growth_rate=4 --epochs=3 --trunk_epochs=1 \
      --lr_drop_epochs=2 --train_size=512 --validation_size=256 \
      --test_size=256 --seeds=0,1 \
      --arms=dense,el1_layer@0.45,el1_global@0.45,bn_gamma_global@0.45,weight_l1_global@0.45,random_matched@0.45,narrow_dense@0.45,retrained@0.45

On a GPU, every arm and seed of a DenseNet-40 table on all 45,000
training images, sized for about 9 minutes (`--max_minutes` stops starting
new runs after that; a rerun resumes):

  python benchmarks/evidence_keras3.py --backend=jax \
      --dataset=tfrecord:DIR --output_dir=docs/evidence/cifar10_d40_keras3 \
      --depth=40 --epochs=12 --trunk_epochs=4 --lr_drop_epochs=8,10 \
      --prune_begin_epoch=0 --prune_end_epoch=2 --train_size=45000 \
      --validation_size=5000 --batch_size=128 --steps_per_execution=50 \
      --seeds=0,1,2 --max_minutes=9

The sizing, not yet measured (no GPU has been available): per seed a
4-epoch trunk, six 8-epoch branches and two 12-epoch runs from scratch are
76 epochs, 3.4M images; three seeds 10.3M images, 8.6 minutes at 20,000
training images per second. Every branch arm of one criterion compiles the
same XLA program, so JAX's persistent compilation cache (under
`--work_dir`) compiles it once.
"""

import os
import sys


def _flag_in(argv, name):
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


# Before Keras (and JAX) load: the backend, and deterministic GPU kernels.
if _flag_in(sys.argv[1:], "backend"):
  os.environ["KERAS_BACKEND"] = _flag_in(sys.argv[1:], "backend")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_gpu_deterministic_ops=true").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

import arm_names
import results_io

FLAGS = flags.FLAGS
flags.DEFINE_enum("backend", "jax", ["jax", "tensorflow", "torch"],
                  "Keras 3 backend.")
flags.DEFINE_string("dataset", None, "tfrecord:DIR with train.tfrecord and "
                    "test.tfrecord.")
flags.DEFINE_string("output_dir", None, "Where results are written.")
flags.DEFINE_string("work_dir", "runs/evidence_keras3", "Trunk weights.")
flags.DEFINE_integer("depth", 16, "DenseNet depth.")
flags.DEFINE_integer("growth_rate", 12, "Growth rate.")
flags.DEFINE_integer("epochs", 6, "Epochs of every arm, trunk included.")
flags.DEFINE_integer("trunk_epochs", 2, "Dense epochs before the branches.")
flags.DEFINE_list("lr_drop_epochs", ["4", "5"], "Epochs dividing the "
                  "learning rate by 10.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 0.1, "Initial SGD learning rate.")
flags.DEFINE_float("weight_decay", 1e-4, "SGD weight decay.")
flags.DEFINE_integer("train_size", 10000, "Training images (after the "
                     "validation ones).")
flags.DEFINE_integer("validation_size", 5000, "Validation images, the first "
                     "training records.")
flags.DEFINE_integer("test_size", 0, "Test images; 0 = all.")
flags.DEFINE_integer("num_stages", 2, "Pruning stages.")
flags.DEFINE_integer("prune_begin_epoch", 0, "Branch epoch of stage 1.")
flags.DEFINE_integer("prune_end_epoch", 1, "Branch epoch of the last stage.")
flags.DEFINE_float("floor", 0.1, "GlobalAllocation's floor per layer.")
flags.DEFINE_integer("steps_per_execution", 1, "Batches per compiled call.")
flags.DEFINE_list("seeds", ["0"], "Seeds: one trunk each.")
flags.DEFINE_list("arms", ["dense", "el1_layer@0.45", "el1_global@0.45",
                           "bn_gamma_global@0.45", "weight_l1_global@0.45",
                           "random_matched@0.45", "narrow_dense@0.45",
                           "retrained@0.45"], "Arms, KIND@KEEP.")
flags.DEFINE_float("max_minutes", 0, "Start no new run after this many "
                   "minutes (0: no limit).")
flags.DEFINE_bool("git_commit", False, "git-commit each result as it lands.")

_CONFIG_FLAGS = (
    "backend", "dataset", "depth", "growth_rate", "epochs", "trunk_epochs",
    "lr_drop_epochs", "batch_size", "learning_rate", "weight_decay",
    "train_size", "validation_size", "test_size", "num_stages",
    "prune_begin_epoch", "prune_end_epoch", "floor", "steps_per_execution")


def run_config():
  config = {name: FLAGS[name].value for name in _CONFIG_FLAGS}
  config["lr_drop_epochs"] = [int(e) for e in config["lr_drop_epochs"]]
  config["path"] = "keras3"
  return config


def check_flags(config):
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required.")
  if not (config["dataset"] or "").startswith("tfrecord:"):
    raise app.UsageError("--dataset must be tfrecord:DIR. Received: "
                         f"--dataset={config['dataset']}")
  if not 1 <= config["trunk_epochs"] < config["epochs"]:
    raise app.UsageError(
        f"--trunk_epochs must be in [1, --epochs). Received: "
        f"{config['trunk_epochs']} with --epochs={config['epochs']}")
  _, end = arm_names.stage_epochs(config)
  if config["trunk_epochs"] + end >= config["epochs"]:
    raise app.UsageError(
        f"The last stage (branch epoch {end}) must come before --epochs="
        f"{config['epochs']} - --trunk_epochs={config['trunk_epochs']}.")
  try:
    chosen = [arm_names.parse(name) for name in FLAGS.arms]
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  unsupported = [a.name for a in chosen
                 if a.kind in ("tfmot_unstructured", "el1_nested")]
  if unsupported:
    raise app.UsageError(f"Arms {unsupported} need tfmot (tf_keras): run "
                         "them with evidence.py.")
  return arm_names.ordered(chosen), seeds


def _data_seed(seed, part):
  return 1000 * seed + (1 if part == "trunk" else 2)


class Runner:
  """Trunks and arms of one configuration on the Keras 3 path."""

  def __init__(self, config):
    import keras
    import tfsdn.keras3 as sdn
    self.keras, self.sdn, self.config = keras, sdn, config
    splits = sdn.data.cifar10(config["dataset"][len("tfrecord:"):],
                              train_size=config["train_size"] or None,
                              validation_size=config["validation_size"],
                              test_size=config["test_size"] or None)
    self.train = splits["train"]
    self.evaluation = {split: (splits[split][0].astype("float32"),
                               splits[split][1])
                       for split in ("validation", "test")}
    self.labels = {split: labels for split, (_, labels) in
                   self.evaluation.items()}
    self.steps_per_epoch = len(self.train[0]) // config["batch_size"]
    self.dense_macs = sdn.dense_macs(self.build(0, "expected_l1"))

  def build(self, seed, criterion, growth_rate=None):
    self.keras.utils.set_random_seed(seed)
    return self.sdn.densenet.DenseNet(
        depth=self.config["depth"],
        growth_rate=growth_rate or self.config["growth_rate"],
        weight_decay=self.config["weight_decay"], criterion=criterion)

  def fit(self, model, data_seed, initial_epoch, epochs, callbacks=()):
    """Trains epochs `initial_epoch` to `epochs` with a fresh optimizer.

    As in evidence.py, a branch starts with fresh SGD momentum and its
    pruning steps count from the branch's first batch.
    """
    keras, config = self.keras, self.config
    model.compile(
        optimizer=keras.optimizers.SGD(config["learning_rate"], momentum=0.9,
                                       nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=config["steps_per_execution"])
    drops = config["lr_drop_epochs"]
    data = self.sdn.data.AugmentedImages(*self.train, config["batch_size"],
                                         seed=data_seed)
    start = time.time()
    history = model.fit(
        data, initial_epoch=initial_epoch, epochs=epochs, verbose=2,
        callbacks=[keras.callbacks.LearningRateScheduler(
            lambda epoch, lr=None: config["learning_rate"] * 0.1**sum(
                epoch >= d for d in drops)), *callbacks])
    return time.time() - start, [float(v) for v in history.history["loss"]]

  def trunk(self, seed):
    directory = os.path.join(FLAGS.work_dir, results_io.digest(self.config)[:12],
                             f"seed{seed}")
    path = os.path.join(directory, "trunk.weights.h5")
    if not os.path.exists(path):
      logging.info("Seed %d: training the trunk", seed)
      model = self.build(seed, "expected_l1")
      self.fit(model, _data_seed(seed, "trunk"), 0,
               self.config["trunk_epochs"])
      os.makedirs(directory, exist_ok=True)
      partial = path + ".partial.weights.h5"
      model.save_weights(partial)
      os.replace(partial, path)
    return path

  def schedule(self, arm, model, needed):
    """What `tfsdn.keras3.Pruning` gets for `arm` (None: not pruned)."""
    sdn, config = self.sdn, self.config
    begin, end = arm_names.stage_epochs(config)  # branch epochs
    if arm.kind in ("el1_global", "bn_gamma_global", "weight_l1_global"):
      return sdn.GlobalAllocation.evenly(
          arm.keep, config["num_stages"], begin, end,
          steps_per_epoch=self.steps_per_epoch, floor=config["floor"])
    if arm.kind == "el1_layer":
      return sdn.stages.evenly_stages(
          sdn.layer_sparsity(model, arm.keep), config["num_stages"],
          begin, end, steps_per_epoch=self.steps_per_epoch)
    if arm.kind == "random_matched":
      per_layer = {}
      for stage in needed["stages"]:
        for name, (pruned, _, channels) in stage["layers"].items():
          per_layer.setdefault(name, []).append(
              (stage["step"], sdn.stages.sparsity_for_count(channels, pruned)))
      return per_layer
    return None

  def run(self, arm, seed, needed):
    keras, sdn, config = self.keras, self.sdn, self.config
    result = {"arm": arm.name, "kind": arm.kind, "keep": arm.keep,
              "seed": seed, "config_digest": results_io.digest(config),
              "backend": keras.backend.backend(),
              "machine": results_io.machine()}
    callbacks = []
    if arm.kind in arm_names.FROM_SCRATCH:
      if arm.kind == "narrow_dense":
        target = arm.keep * self.dense_macs
        growth = next(k for k in range(config["growth_rate"] - 1, 0, -1)
                      if sdn.dense_macs(self.build(seed, "expected_l1", k))
                      <= target)
        result["growth_rate"] = growth
        model = self.build(seed, "expected_l1", growth)
      else:
        stripped = keras.saving.load_model(needed["model_path"])
        keras.utils.set_random_seed(seed)
        model = keras.models.clone_model(stripped)
      initial_epoch, data_seed = 0, _data_seed(seed, "trunk")
    else:
      model = self.build(seed, arm.criterion)
      model.load_weights(self.trunk(seed))
      if arm.criterion == "random":
        rng = np.random.default_rng(seed)
        for layer in sdn.prunable_layers(model):
          layer.contribution_score.assign(
              rng.uniform(0.05, 1.0, layer.input_channels).astype("float32"))
      schedule = self.schedule(arm, model, needed)
      if schedule is not None:
        callbacks = [sdn.Pruning(schedule)]
      initial_epoch = config["trunk_epochs"]
      data_seed = _data_seed(seed, "branch")
    seconds, loss = self.fit(model, data_seed, initial_epoch,
                             config["epochs"], callbacks)
    result.update(train_seconds=seconds, train_loss=loss)
    if callbacks:
      result["stages"] = [
          {"step": h["step"], "layers": {n: list(r) for n, r in
                                         h["layers"].items()}}
          for h in callbacks[0].history]
    if sdn.prunable_layers(model):
      result["layer_sparsity"] = {l.name: l.sparsity()
                                  for l in sdn.prunable_layers(model)}
      compact = sdn.strip(model, slice_cost_macs=0).model  # Exact reads.
    else:
      compact = model
    macs = sdn.dense_macs(compact)
    result.update(params=int(compact.count_params()), macs=macs,
                  macs_computed=macs, dense_macs=self.dense_macs,
                  macs_vs_dense=macs / self.dense_macs,
                  train_examples=int(len(self.train[0])))
    for split, (images, labels) in self.evaluation.items():
      predicted = np.argmax(np.asarray(compact.predict(
          images, batch_size=256, verbose=0)), -1)
      result[f"{split}_accuracy"] = float(np.mean(predicted == labels))
      result[f"{split}_predictions"] = results_io.encode(predicted)
      result[f"{split}_examples"] = int(len(predicted))
    return result, compact


def _compilation_cache():
  """Lets every arm reuse the XLA programs of the arms before it (JAX)."""
  if FLAGS.backend != "jax":
    return
  import jax
  jax.config.update("jax_compilation_cache_dir",
                    os.path.abspath(os.path.join(FLAGS.work_dir, "jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def main(argv):
  del argv
  started = time.time()
  config = run_config()
  chosen, seeds = check_flags(config)
  _compilation_cache()
  try:
    results_io.prepare_output_dir(FLAGS.output_dir, config)
  except results_io.ConfigMismatch as e:
    raise app.UsageError(str(e)) from None
  runner = Runner(config)
  from tfsdn.files import write_json
  labels_path = os.path.join(FLAGS.output_dir, "labels.json")
  if not os.path.exists(labels_path):
    write_json(labels_path, {split: results_io.encode(values)
                             for split, values in runner.labels.items()})
  logging.info("Backend %s: %d training images, %d steps per epoch",
               config["backend"], len(runner.train[0]),
               runner.steps_per_epoch)
  timings = []
  for seed in seeds:
    directory = os.path.join(FLAGS.output_dir, f"seed{seed}")
    for arm in chosen:
      path = os.path.join(directory, f"{arm.name}.json")
      if os.path.exists(path):
        continue
      if FLAGS.max_minutes and time.time() - started > 60 * FLAGS.max_minutes:
        logging.warning("--max_minutes=%g reached: %s, seed %d and later are "
                        "left for a rerun (it resumes).", FLAGS.max_minutes,
                        arm.name, seed)
        return
      needed = None
      if arm.needs:
        with open(os.path.join(directory, f"{arm.needs.name}.json")) as f:
          needed = json.load(f)
      result, compact = runner.run(arm, seed, needed)
      written = results_io.save_result(result, compact, directory, arm.name)
      timings.append((arm.name, seed, result["train_seconds"]))
      logging.info("%s, seed %d: validation %.4f, test %.4f, %.3fx MACs, "
                   "%.0f s", arm.name, seed, result["validation_accuracy"],
                   result["test_accuracy"], result["macs_vs_dense"],
                   result["train_seconds"])
      if FLAGS.git_commit:
        results_io.git_commit(
            written + [os.path.join(FLAGS.output_dir, "config.json"),
                       labels_path],
            f"Evidence (Keras 3, {config['backend']}): {arm.name}, seed "
            f"{seed} (test {result['test_accuracy']:.4f})")
  print(json.dumps({"minutes": (time.time() - started) / 60,
                    "runs": len(timings)}))


if __name__ == "__main__":
  app.run(main)
