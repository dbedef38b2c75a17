"""tfsdn: sparse DenseNets, pruned in stages by tensorflow-model-optimization.

The public API is what this module exports (`__all__`), plus the modules
`tfsdn.densenet` (builders), `tfsdn.allocation` (global allocation under a
MAC budget: `GlobalAllocation`, `layerwise_sparsity`), `tfsdn.criteria`
(contribution criteria and the definition of live/pruned), `tfsdn.schedule`
(`epoch_step`, `pruned_count`, `sparsity_for_count`), `tfsdn.quantize`
(`quantize_aware`, `fold_batch_norms`: quantization-aware training of a
compact model) and `tfsdn.data` (CIFAR input pipelines). The data flows one way:

  layer (PrunableConcatConv, make_prunable) -> prune (prune_dense_connections,
  StagedSparsity or GlobalAllocation, UpdateScores) -> strip (strip: compact
  model + what it kept) -> report (model_report, plot_connectivity) / export
  (export_saved_model, export_tflite, export_onnx).

The Keras 3 path lives in `tfsdn.keras3` (see its docstring for when to
use which). It needs neither TensorFlow nor tfmot: where tensorflow, tf_keras
and tensorflow-model-optimization are not all installed, `import tfsdn`
skips the tfmot path and its names raise an `ImportError` that says so.

Everything else (`tfsdn.graph`, `tfsdn.internals`, `tfsdn.recipe`,
`tfsdn.testing`, ...) serves the library, its scripts and its tests and may
change without notice.
"""
import importlib.util as _importlib_util

# The backend-free code both paths share (no TensorFlow, no Keras).
from tfsdn import common  # pylint: disable=unused-import

_TFMOT_PATH_NEEDS = ("tensorflow", "tf_keras", "tensorflow_model_optimization")


def _installed(name):
  try:
    return _importlib_util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


_MISSING = [name for name in _TFMOT_PATH_NEEDS if not _installed(name)]

if not _MISSING:
  # Eager, as before: importing tfsdn registers its tf_keras serializables,
  # so `tf_keras.models.load_model` finds them after a bare `import tfsdn`.
  from tfsdn import allocation
  from tfsdn import criteria
  from tfsdn import data
  from tfsdn import densenet
  from tfsdn import schedule
  from tfsdn.allocation import GlobalAllocation
  from tfsdn.callbacks import StageShortfallError
  from tfsdn.callbacks import UpdateScores
  from tfsdn.calibration import calibrate
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
  from tfsdn.quantize import quantize_aware
  from tfsdn.report import ModelReport
  from tfsdn.report import comparison_markdown
  from tfsdn.report import model_report
  from tfsdn.schedule import StagedSparsity

# Backend-free: where a compact model runs (both paths' `strip` take it).
from tfsdn.common.deploy_target import RuntimeCosts  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfsdn.common.deploy_target import Target  # pylint: disable=g-import-not-at-top,wrong-import-position

__version__ = "0.1.0"

__all__ = [
    "GlobalAllocation",
    "ModelReport",
    "PrunableConcatConv",
    "RuntimeCosts",
    "StageShortfallError",
    "StagedSparsity",
    "Stripped",
    "Target",
    "UpdateScores",
    "allocation",
    "calibrate",
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
    "quantize_aware",
    "schedule",
    "strip",
    "strip_to_compact",
]


def __getattr__(name):
  if name in __all__ and _MISSING:
    raise ImportError(
        f"tfsdn.{name} belongs to the tfmot path, which needs "
        f"{', '.join(_TFMOT_PATH_NEEDS)}; not installed here: "
        f"{', '.join(_MISSING)}. For Keras 3 use tfsdn.keras3.")
  raise AttributeError(f"module 'tfsdn' has no attribute {name!r}")
