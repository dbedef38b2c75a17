"""tfsdn for Keras 3: the same method on any Keras 3 backend.

Which path to use:

* **tf_keras (Keras 2) with tfmot** (`tfsdn` itself): for users of
  tensorflow-model-optimization's pruning loop (`prune_low_magnitude`,
  `UpdatePruningStep`, `strip_pruning`), `tf.distribute` multi-worker
  training and the export helpers there (SavedModel with an XLA option,
  TFLite with quantization, ONNX).
* **Keras 3** (`tfsdn.keras3`): for Keras 3 models on the TensorFlow, JAX
  or PyTorch backend. tfmot does not support Keras 3, so this path runs the
  stages itself, from a callback (`Pruning`), and exports with Keras 3's
  own `model.export`. It needs neither TensorFlow nor tfmot (on the JAX or
  PyTorch backend).

What the two paths share (TensorFlow-free modules): the stage arithmetic
(`tfsdn.common.stages`: steps, exact counts), global allocation
(`tfsdn.common.allocation`), the DenseNet builders (`tfsdn.common.architecture`),
the filter ordering of the strip step (`tfsdn.common.channel_order`) and the
criteria's definitions (`tfsdn.common.scores`; the tfmot path computes them with
TensorFlow ops on distributed variables, `tfsdn.criteria`). Where they
differ: the tfmot path keeps the mask in tfmot's wrapper and measures its
statistics per replica; the Keras 3 layer holds no wrapper, so `Pruning`
zeroes the pruned scores itself, and with `steps_per_execution > 1` a
stage acts at the start of the call that contains its step.

Example:

```python
import keras
import tfsdn.keras3 as sdn

model = sdn.densenet.DenseNet(depth=40, growth_rate=12)
model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
    from_logits=True), metrics=["accuracy"])
model.fit(images, labels, epochs=10,
          callbacks=[sdn.Pruning([(2000, 0.25), (4000, 0.5)])])
compact = sdn.strip(model).model
sdn.export(compact, "export/densenet", format="tf_saved_model")
```
"""

import keras as _keras

if not _keras.__version__.split(".")[0].isdigit() or int(
    _keras.__version__.split(".")[0]) < 3:
  raise ImportError(
      f"tfsdn.keras3 needs Keras 3; found keras {_keras.__version__}. For "
      "tf_keras (Keras 2) models use the tfmot path: import tfsdn.")

# pylint: disable=g-import-not-at-top,wrong-import-position
from tfsdn.common import stages
from tfsdn.common.deploy_target import RuntimeCosts
from tfsdn.common.deploy_target import Target
from tfsdn.common.allocation import GlobalAllocation
from tfsdn.keras3 import data
from tfsdn.keras3 import densenet
from tfsdn.keras3.convert import conversion_plan
from tfsdn.keras3.convert import make_prunable
from tfsdn.keras3.export import export
from tfsdn.keras3.layer import PrunableConcatConv
from tfsdn.keras3.migrate import from_tf_keras
from tfsdn.keras3.migrate import to_tf_keras
from tfsdn.keras3.pruning import Pruning
from tfsdn.keras3.pruning import dense_macs
from tfsdn.keras3.pruning import layer_sparsity
from tfsdn.keras3.pruning import prunable_layers
from tfsdn.keras3.report import model_report
from tfsdn.keras3.strip import Stripped
from tfsdn.keras3.strip import strip
from tfsdn.plot import plot_connectivity
from tfsdn.common.report import comparison_markdown
from tfsdn.common.stages import StageShortfallError

__all__ = [
    "RuntimeCosts",
    "Target",
    "GlobalAllocation",
    "Pruning",
    "PrunableConcatConv",
    "StageShortfallError",
    "comparison_markdown",
    "conversion_plan",
    "make_prunable",
    "Stripped",
    "data",
    "dense_macs",
    "densenet",
    "export",
    "from_tf_keras",
    "layer_sparsity",
    "model_report",
    "plot_connectivity",
    "prunable_layers",
    "stages",
    "strip",
    "to_tf_keras",
]
