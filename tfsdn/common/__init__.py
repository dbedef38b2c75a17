"""The code both paths share: no TensorFlow, no Keras.

What the tf_keras + tfmot path (`tfsdn`) and the Keras 3 path
(`tfsdn.keras3`) decide alike is decided here, once; each path only builds
what this code decides, with its own Keras:

* `stages`: stage steps and exact counts per stage, the CIFAR recipe's
  stage and learning-rate epochs.
* `scores`: the criteria's definitions and names, live and pruned.
* `allocation`: global allocation of a MAC or channel budget.
* `chains`: which BN -> ReLU -> Conv2D chains `make_prunable` converts.
* `liveness`: which filters the strip step keeps, compact MACs.
* `channel_order`: the strip step's filter order for contiguous reads.
* `deploy_target`: `Target`, the strip layout planner.
* `architecture`: the DenseNet builders, for either Keras.
* `report`: per-layer parameters and MACs, tables, comparisons.
* `checks`: argument checks whose errors quote the value.
"""

from tfsdn.common import checks
from tfsdn.common import stages
from tfsdn.common import scores
from tfsdn.common import allocation
from tfsdn.common import architecture
from tfsdn.common import chains
from tfsdn.common import channel_order
from tfsdn.common import deploy_target
from tfsdn.common import liveness
from tfsdn.common import report
