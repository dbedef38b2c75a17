"""tfsdn: sparse DenseNets, pruned in stages by tensorflow-model-optimization."""

from tfsdn import densenet
from tfsdn.compact import strip_to_compact
from tfsdn.compat import KERAS3_HELP
from tfsdn.convert import conversion_plan
from tfsdn.convert import make_prunable
from tfsdn.export import export_saved_model
from tfsdn.export import export_tflite
from tfsdn.prunable_concat_conv import PrunableConcatConv
from tfsdn.prune import prunable_layers
from tfsdn.prune import prune_at_random
from tfsdn.prune import prune_dense_connections
from tfsdn.report import comparison_markdown
from tfsdn.report import model_report
from tfsdn.report import plot_connectivity
from tfsdn.schedule import StagedSparsity
from tfsdn.stage_check import StageCheck
from tfsdn.stage_check import StageShortfallError

__version__ = "0.1.0"

__all__ = [
    "KERAS3_HELP",
    "PrunableConcatConv",
    "StageCheck",
    "StageShortfallError",
    "StagedSparsity",
    "comparison_markdown",
    "conversion_plan",
    "densenet",
    "export_saved_model",
    "export_tflite",
    "make_prunable",
    "model_report",
    "plot_connectivity",
    "prunable_layers",
    "prune_at_random",
    "prune_dense_connections",
    "strip_to_compact",
]
