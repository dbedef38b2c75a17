"""The training set-up of the evidence experiment (`evidence.py`).

The flags that decide what a model learns, their checks and the model
builder. They live in a module of their own so that `training_config` can
tell them from the runner's other flags (the module that defines them).
"""

from absl import app
from absl import flags

import tfsdn
from tfsdn import data as sdn_data
from tfsdn import recipe
from tfsdn.compat import keras

TFSDN_ARMS = ("expected_l1", "weight_l1", "bn_gamma", "random")

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "cifar10",
                    "cifar10 | cifar100 (tensorflow_datasets) | tfrecord:DIR.")
flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory.")
flags.DEFINE_string("output_dir", "benchmarks/results/experiment",
                    "Where per-arm JSON, exports, the table and plot go.")
flags.DEFINE_integer("depth", 16, "DenseNet depth L.")
flags.DEFINE_integer("growth_rate", 12, "Growth rate k.")
flags.DEFINE_bool("bottleneck", False, "DenseNet-B bottleneck layers.")
flags.DEFINE_float("compression", 1.0, "Transition compression (0.5 for BC).")
flags.DEFINE_integer("epochs", 8, "Training epochs of every arm.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 0.1, "Initial SGD learning rate.")
flags.DEFINE_float("weight_decay", 1e-4, "SGD weight decay.")
flags.DEFINE_integer("train_size", 5000,
                     "Training images (after the validation images); "
                     "0 = the rest of the train split.")
flags.DEFINE_integer("validation_size", 1000,
                     "Images held out from the start of the train split for "
                     "any choice made on the results; 0 = none.")
flags.DEFINE_integer("test_size", 0, "Test images; 0 = the whole test split.")
flags.DEFINE_float("final_sparsity", 0.5,
                   "Per-layer input-channel sparsity of the pruned arms.")
flags.DEFINE_integer("num_stages", 3, "Pruning stages.")
flags.DEFINE_integer("prune_begin_epoch", None,
                     "Epoch of the first stage (default epochs // 8).")
flags.DEFINE_integer("prune_end_epoch", None,
                     "Epoch of the last stage (default epochs // 4).")
flags.DEFINE_float("score_momentum", 0.9,
                   "Momentum of expected_l1's moving average of E|x|.")
flags.DEFINE_float("group_lasso", 0.0,
                   "Group-lasso strength of the tfsdn arms (0 = off).")
flags.DEFINE_integer("seed", 0, "Seed of initialisation and data order.")
flags.DEFINE_bool("jit_compile", False, "Train with XLA.")

# Flags of this module that do not change what a model learns.
_NOT_TRAINING = ("data_dir", "output_dir")


def training_config():
  """The flags that determine what every arm learns."""
  module = FLAGS.find_module_defining_flag("depth")
  return {f.name: f.value for f in FLAGS.flags_by_module_dict()[module]
          if f.name not in _NOT_TRAINING}


def check_training_flags(config):
  """Fails before any training on a flag value that cannot work."""
  kind, directory = sdn_data.parse_dataset_name(config["dataset"])
  if kind == "tfrecord":
    sdn_data.check_tfrecord_dir(directory)
  if not 0.0 < config.get("final_sparsity", 0.5) < 1.0:
    raise app.UsageError("--final_sparsity must be in (0, 1). Received: "
                         f"{config['final_sparsity']}")
  for name in ("epochs", "num_stages", "batch_size"):
    if config[name] < 1:
      raise app.UsageError(f"--{name} must be >= 1. Received: {config[name]}")
  for name in ("train_size", "validation_size", "test_size"):
    if config[name] < 0:
      raise app.UsageError(f"--{name} must be >= 0. Received: {config[name]}")
  if not 0.0 <= config["score_momentum"] < 1.0:
    raise app.UsageError("--score_momentum must be in [0, 1). Received: "
                         f"{config['score_momentum']}")
  if config["group_lasso"] < 0:
    raise app.UsageError(
        f"--group_lasso must be >= 0. Received: {config['group_lasso']}")
  begin, end = recipe.default_pruning_epochs(
      config["epochs"], config["prune_begin_epoch"], config["prune_end_epoch"])
  if begin < 0 or end >= config["epochs"]:
    raise app.UsageError(
        f"Pruning epochs {begin}..{end} must lie in 0..{config['epochs'] - 1} "
        f"(--prune_begin_epoch={config['prune_begin_epoch']}, "
        f"--prune_end_epoch={config['prune_end_epoch']}).")


def build_densenet(config, criterion):
  keras.utils.set_random_seed(config["seed"])  # The same init for all arms.
  return tfsdn.densenet.DenseNet(
      depth=config["depth"], growth_rate=config["growth_rate"],
      bottleneck=config["bottleneck"], compression=config["compression"],
      num_classes=sdn_data.num_classes(config["dataset"]),
      weight_decay=config["weight_decay"], criterion=criterion,
      score_momentum=config["score_momentum"],
      group_lasso=config["group_lasso"] if criterion in TFSDN_ARMS else 0.0)
