"""DenseNet builders for either Keras, written once (no TensorFlow import).

`builders(keras, conv_class)` returns the builder functions for one Keras
(`tf_keras` for the tfmot path, Keras 3 for `tfsdn.keras3`) and its
`PrunableConcatConv`: the same code builds both, so the two paths' models
have the same layer names, shapes and parameter counts. `tfsdn.densenet`
and `tfsdn.keras3.densenet` expose them.
"""

import numbers
import types



CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

IMAGENET_BLOCKS = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
}


def builders(keras, conv_class):  # pylint: disable=redefined-outer-name
  """The DenseNet builders for `keras` (a Keras module) and `conv_class`.

  Returns:
    A namespace with `dense_layer`, `dense_block`, `transition_block`,
    `DenseNet`, `DenseNetImageNet`, `DenseNet121`, `DenseNet169` and
    `DenseNet201`.
  """
  def _l2(weight_decay):
    # Keras' l2(c) adds c * sum(w^2), whose gradient is 2c * w; SGD weight decay
    # wd means a gradient of wd * w, hence c = wd / 2.
    return keras.regularizers.l2(weight_decay / 2) if weight_decay else None


  def _normalize(inputs, mean, std):
    if len(mean) != inputs.shape[-1] or len(std) != inputs.shape[-1]:
      raise ValueError(
          f"mean and std need one value per input channel "
          f"({inputs.shape[-1]}). Received: mean={mean!r}, std={std!r}")
    if any(s <= 0 for s in std):
      raise ValueError(f"std must be positive. Received: std={std!r}")
    return keras.layers.Normalization(
        mean=list(mean), variance=[s * s for s in std], name="normalize")(inputs)


  def dense_layer(features, growth_rate, bottleneck, dropout_rate, name,
                  **conv_kwargs):
    """One dense layer: reads all `features`, returns `growth_rate` new maps.

    Args:
      features: List of the block's feature maps so far.
      growth_rate: Number of feature maps the layer adds.
      bottleneck: If True, a prunable 1x1 conv to 4 * growth_rate channels
        reads the concatenation (its inputs: the dense connections), then a
        prunable BN-ReLU-3x3 conv reads those 4k maps (its inputs: the
        bottleneck width) (DenseNet-B).
      dropout_rate: Dropout after each conv, 0 for none.
      name: Layer name prefix, e.g. `block1_layer3`.
      **conv_kwargs: Passed to every `PrunableConcatConv`.

    Returns:
      The new feature map tensor.
    """
    if bottleneck:
      x = conv_class(4 * growth_rate, 1, name=f"{name}_bottleneck",
                             **conv_kwargs)(features)
      if dropout_rate:
        x = keras.layers.Dropout(dropout_rate, name=f"{name}_bottleneck_drop")(x)
      # BN-ReLU-3x3 conv over the bottleneck's 4k maps, prunable too: its
      # pruned inputs are bottleneck filters that strip removes (the width).
      x = conv_class(growth_rate, 3, name=f"{name}_conv",
                             **conv_kwargs)(x)
    else:
      x = conv_class(growth_rate, 3, name=name, **conv_kwargs)(features)
    if dropout_rate:
      x = keras.layers.Dropout(dropout_rate, name=f"{name}_drop")(x)
    return x


  def dense_block(features, num_layers, growth_rate, bottleneck, dropout_rate,
                  name, **conv_kwargs):
    """Appends `num_layers` dense layers' outputs to `features` and returns it."""
    features = list(features)
    for i in range(1, num_layers + 1):
      features.append(dense_layer(features, growth_rate, bottleneck,
                                  dropout_rate, f"{name}_layer{i}",
                                  **conv_kwargs))
    return features


  def transition_block(features, compression, dropout_rate, name,
                       **conv_kwargs):
    """A prunable 1x1 conv over the whole block output, then 2x2 avg-pooling."""
    channels = sum(int(f.shape[-1]) for f in features)
    x = conv_class(int(channels * compression), 1, name=name,
                           **conv_kwargs)(features)
    if dropout_rate:
      x = keras.layers.Dropout(dropout_rate, name=f"{name}_drop")(x)
    return keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


  def _classifier(features, num_classes, weight_decay):
    x = keras.layers.Concatenate(name="final_concat")(features) if len(
        features) > 1 else features[0]
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="final_bn")(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Dense(
        num_classes, kernel_regularizer=_l2(weight_decay), name="logits")(x)


  def _check_common(growth_rate, compression, num_classes, dropout_rate,
                    weight_decay):
    if not isinstance(growth_rate, numbers.Integral) or growth_rate < 1:
      raise ValueError(
          f"growth_rate must be a positive integer. Received: "
          f"growth_rate={growth_rate!r}")
    if not 0.0 < compression <= 1.0:
      raise ValueError(
          f"compression must be in (0, 1]. Received: compression={compression!r}")
    if not isinstance(num_classes, numbers.Integral) or num_classes < 2:
      raise ValueError(
          f"num_classes must be an integer >= 2. Received: "
          f"num_classes={num_classes!r}")
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(
          f"dropout_rate must be in [0, 1). Received: "
          f"dropout_rate={dropout_rate!r}")
    if weight_decay < 0:
      raise ValueError(
          f"weight_decay must be >= 0. Received: weight_decay={weight_decay!r}")


  def DenseNet(depth=40,  # pylint: disable=invalid-name
               growth_rate=12,
               bottleneck=False,
               compression=1.0,
               num_classes=10,
               input_shape=(32, 32, 3),
               dropout_rate=0.0,
               weight_decay=1e-4,
               criterion="expected_l1",
               score_momentum=0.9,
               group_lasso=0.0,
               mean=CIFAR_MEAN,
               std=CIFAR_STD,
               name=None):
    """The CIFAR DenseNet of Huang et al. (3 dense blocks), made prunable.

    DenseNet (L=40, k=12) has 1.0M parameters; DenseNet-BC (L=100, k=12,
    `bottleneck=True, compression=0.5`) has 0.8M.

    Example:

    ```python
    model = tfsdn.densenet.DenseNet(depth=100, growth_rate=12, bottleneck=True,
                                    compression=0.5, num_classes=100)
    ```

    Args:
      depth: Total depth L; (L - 4) must divide by 3 (by 6 with bottleneck).
      growth_rate: k, feature maps added per dense layer.
      bottleneck: Use 1x1 bottleneck convs (DenseNet-B).
      compression: Transition compression theta in (0, 1] (DenseNet-C if < 1).
      num_classes: Number of classes of the logits.
      input_shape: Image shape (H, W, C), raw pixels 0-255.
      dropout_rate: Dropout after every conv (0.2 in the paper without
        augmentation).
      weight_decay: SGD weight decay of conv and dense kernels.
      criterion: Contribution criterion of every `PrunableConcatConv`.
      score_momentum: Momentum of the `"expected_l1"` statistics.
      group_lasso: Group-lasso strength of every `PrunableConcatConv`.
      mean: Per-channel pixel mean used by the input normalisation.
      std: Per-channel pixel standard deviation used by it.
      name: Model name; default `densenet{depth}` or `densenet_bc{depth}`.

    Returns:
      A functional Keras model (of the Keras the builders were made for) returning logits.

    Raises:
      ValueError: if an argument is out of range (the message quotes it).
    """
    _check_common(growth_rate, compression, num_classes, dropout_rate,
                  weight_decay)
    per_block = 6 if bottleneck else 3
    if (not isinstance(depth, numbers.Integral) or depth < 4 + per_block or
        (depth - 4) % per_block):
      raise ValueError(
          f"depth - 4 must be a positive multiple of {per_block} "
          f"(bottleneck={bottleneck}). Received: depth={depth!r}")
    layers_per_block = (depth - 4) // per_block
    conv_kwargs = dict(kernel_regularizer=_l2(weight_decay), criterion=criterion,
                       score_momentum=score_momentum, group_lasso=group_lasso)
    inputs = keras.Input(shape=input_shape, name="image")
    x = _normalize(inputs, mean, std)
    stem_channels = 2 * growth_rate if bottleneck else 16
    x = keras.layers.Conv2D(
        stem_channels, 3, padding="same", use_bias=False,
        kernel_initializer="he_normal", kernel_regularizer=_l2(weight_decay),
        name="stem_conv")(x)
    features = [x]
    for block in range(1, 4):
      features = dense_block(features, layers_per_block, growth_rate, bottleneck,
                             dropout_rate, f"block{block}", **conv_kwargs)
      if block < 3:
        features = [transition_block(features, compression, dropout_rate,
                                     f"transition{block}", **conv_kwargs)]
    outputs = _classifier(features, num_classes, weight_decay)
    if name is None:
      name = f"densenet_bc{depth}" if bottleneck and compression < 1 else (
          f"densenet{depth}")
    return keras.Model(inputs, outputs, name=name)


  def DenseNetImageNet(blocks,  # pylint: disable=invalid-name
                       growth_rate=32,
                       compression=0.5,
                       num_classes=1000,
                       input_shape=(224, 224, 3),
                       name="densenet",
                       **kwargs):
    """An ImageNet-style DenseNet-BC (7x7 stem, 4 blocks), made prunable.

    Args:
      blocks: Dense layers per block, e.g. (6, 12, 24, 16) for DenseNet-121.
      growth_rate: k (32 in the paper).
      compression: Transition compression (0.5 in the paper).
      num_classes: Number of classes of the logits.
      input_shape: Image shape (H, W, C), raw pixels 0-255.
      name: Model name.
      **kwargs: `dropout_rate`, `weight_decay`, `criterion`, `score_momentum`,
        `group_lasso`, `mean` (default ImageNet's) and `std`, as in `DenseNet`.

    Returns:
      A functional Keras model (of the Keras the builders were made for) returning logits.
    """
    options = dict(dropout_rate=0.0, weight_decay=1e-4, criterion="expected_l1",
                   score_momentum=0.9, group_lasso=0.0, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
      raise TypeError(f"DenseNetImageNet got unexpected arguments {unknown}.")
    options.update(kwargs)
    dropout_rate, weight_decay = options["dropout_rate"], options["weight_decay"]
    _check_common(growth_rate, compression, num_classes, dropout_rate,
                  weight_decay)
    if not blocks or any(
        not isinstance(b, numbers.Integral) or b < 1 for b in blocks):
      raise ValueError(
          f"blocks must be positive layer counts. Received: blocks={blocks!r}")
    conv_kwargs = dict(kernel_regularizer=_l2(weight_decay),
                       criterion=options["criterion"],
                       score_momentum=options["score_momentum"],
                       group_lasso=options["group_lasso"])
    inputs = keras.Input(shape=input_shape, name="image")
    x = _normalize(inputs, options["mean"], options["std"])
    x = keras.layers.Conv2D(
        2 * growth_rate, 7, strides=2, padding="same", use_bias=False,
        kernel_initializer="he_normal", kernel_regularizer=_l2(weight_decay),
        name="stem_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                  name="stem_pool")(x)
    features = [x]
    for block, num_layers in enumerate(blocks, start=1):
      features = dense_block(features, num_layers, growth_rate, True,
                             dropout_rate, f"block{block}", **conv_kwargs)
      if block < len(blocks):
        features = [transition_block(features, compression, dropout_rate,
                                     f"transition{block}", **conv_kwargs)]
    outputs = _classifier(features, num_classes, weight_decay)
    return keras.Model(inputs, outputs, name=name)


  def _imagenet_builder(size):
    def builder(num_classes=1000, input_shape=(224, 224, 3), **kwargs):
      return DenseNetImageNet(IMAGENET_BLOCKS[size], num_classes=num_classes,
                              input_shape=input_shape,
                              name=kwargs.pop("name", f"densenet{size}"),
                              **kwargs)
    builder.__name__ = f"DenseNet{size}"
    builder.__doc__ = (
        f"DenseNet-{size} (blocks {IMAGENET_BLOCKS[size]}, k=32), made "
        "prunable; keyword arguments as in `DenseNetImageNet`.")
    return builder


  DenseNet121 = _imagenet_builder(121)
  DenseNet169 = _imagenet_builder(169)
  DenseNet201 = _imagenet_builder(201)

  return types.SimpleNamespace(
      dense_layer=dense_layer,
      dense_block=dense_block,
      transition_block=transition_block,
      DenseNet=DenseNet,
      DenseNetImageNet=DenseNetImageNet,
      DenseNet121=DenseNet121,
      DenseNet169=DenseNet169,
      DenseNet201=DenseNet201,
  )
