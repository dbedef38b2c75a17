"""tfsdn: sparse DenseNets, pruned in stages by tensorflow-model-optimization."""

from tfsdn import densenet
from tfsdn.compat import KERAS3_HELP
from tfsdn.prunable_concat_conv import PrunableConcatConv
from tfsdn.prune import prunable_layers
from tfsdn.prune import prune_dense_connections
from tfsdn.schedule import StagedSparsity

__version__ = "0.1.0"

__all__ = [
    "KERAS3_HELP",
    "PrunableConcatConv",
    "StagedSparsity",
    "densenet",
    "prunable_layers",
    "prune_dense_connections",
]
