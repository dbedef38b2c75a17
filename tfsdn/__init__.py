"""tfsdn: sparse DenseNets, pruned in stages by tensorflow-model-optimization.

The public API is what this module exports (`__all__`), plus the modules
`tfsdn.densenet` (builders), `tfsdn.allocation` (global allocation under a
MAC budget: `GlobalAllocation`, `layerwise_sparsity`), `tfsdn.criteria`
(contribution criteria and the definition of live/pruned), `tfsdn.schedule`
(`epoch_step`, `pruned_count`, `sparsity_for_count`) and `tfsdn.data` (CIFAR
input pipelines). The data flows one way:

  layer (PrunableConcatConv, make_prunable) -> prune (prune_dense_connections,
  StagedSparsity or GlobalAllocation, UpdateScores) -> strip (strip: compact
  model + what it kept) -> report (model_report, plot_connectivity) / export
  (export_saved_model, export_tflite, export_onnx).

Everything else (`tfsdn.graph`, `tfsdn.internals`, `tfsdn.recipe`,
`tfsdn.testing`, ...) serves the library, its scripts and its tests and may
change without notice.
"""

from tfsdn import allocation
from tfsdn import criteria
from tfsdn import data
from tfsdn import densenet
from tfsdn import schedule
from tfsdn.allocation import GlobalAllocation
from tfsdn.callbacks import StageShortfallError
from tfsdn.callbacks import UpdateScores
from tfsdn.compact import Stripped
from tfsdn.compact import strip
from tfsdn.compact import strip_to_compact
from tfsdn.convert import conversion_plan
from tfsdn.convert import make_prunable
from tfsdn.export import export_onnx
from tfsdn.export import export_saved_model
from tfsdn.export import export_tflite
from tfsdn.plot import plot_connectivity
from tfsdn.prunable_concat_conv import PrunableConcatConv
from tfsdn.prune import prunable_layers
from tfsdn.prune import prune_dense_connections
from tfsdn.report import ModelReport
from tfsdn.report import comparison_markdown
from tfsdn.report import model_report
from tfsdn.schedule import StagedSparsity

__version__ = "0.1.0"

__all__ = [
    "GlobalAllocation",
    "ModelReport",
    "PrunableConcatConv",
    "StageShortfallError",
    "StagedSparsity",
    "Stripped",
    "UpdateScores",
    "allocation",
    "comparison_markdown",
    "conversion_plan",
    "criteria",
    "data",
    "densenet",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
    "make_prunable",
    "model_report",
    "plot_connectivity",
    "prunable_layers",
    "prune_dense_connections",
    "schedule",
    "strip",
    "strip_to_compact",
]
