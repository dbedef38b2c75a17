"""DenseNet builders for Keras 3, made of `tfsdn.keras3.PrunableConcatConv`.

The same builders as `tfsdn.densenet` (one code, `tfsdn.common.architecture`), so
the models have the same layer names and parameter counts as the tf_keras
ones, and weights move between them by name (`tfsdn.keras3.from_tf_keras`).
"""

import keras

from tfsdn.common import architecture
from tfsdn.keras3.layer import PrunableConcatConv

_BUILDERS = architecture.builders(keras, PrunableConcatConv)
dense_layer = _BUILDERS.dense_layer
dense_block = _BUILDERS.dense_block
transition_block = _BUILDERS.transition_block
DenseNet = _BUILDERS.DenseNet
DenseNetImageNet = _BUILDERS.DenseNetImageNet
DenseNet121 = _BUILDERS.DenseNet121
DenseNet169 = _BUILDERS.DenseNet169
DenseNet201 = _BUILDERS.DenseNet201
