"""DenseNet builders made of `PrunableConcatConv` layers.

Every conv that reads a concatenation of earlier feature maps (dense layers
and transitions) is a `PrunableConcatConv`. Layer names are stable, so weight
surgery and reports can address them: `block2_layer5`, `transition1`, ...

Models take raw RGB pixels (0-255); the first layer, `normalize`, subtracts
the per-channel mean and divides by the standard deviation. They return
logits (no softmax).
"""
from tfsdn.common import architecture
from tfsdn.common.architecture import CIFAR_MEAN  # noqa: F401  pylint: disable=unused-import
from tfsdn.common.architecture import CIFAR_STD  # noqa: F401  pylint: disable=unused-import
from tfsdn.common.architecture import IMAGENET_BLOCKS  # noqa: F401  pylint: disable=unused-import
from tfsdn.common.architecture import IMAGENET_MEAN  # noqa: F401  pylint: disable=unused-import
from tfsdn.common.architecture import IMAGENET_STD  # noqa: F401  pylint: disable=unused-import
from tfsdn.compat import keras
from tfsdn.prunable_concat_conv import PrunableConcatConv

# One builder code for both paths (`tfsdn.common.architecture`), made for tf_keras.
_BUILDERS = architecture.builders(keras, PrunableConcatConv)
dense_layer = _BUILDERS.dense_layer
dense_block = _BUILDERS.dense_block
transition_block = _BUILDERS.transition_block
DenseNet = _BUILDERS.DenseNet
DenseNetImageNet = _BUILDERS.DenseNetImageNet
DenseNet121 = _BUILDERS.DenseNet121
DenseNet169 = _BUILDERS.DenseNet169
DenseNet201 = _BUILDERS.DenseNet201
