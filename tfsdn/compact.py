"""The strip step: rebuild a pruned DenseNet without its pruned channels.

`strip(model)` returns the compact model together with what it kept of every
`PrunableConcatConv` (a `Stripped`); the report and the connectivity plot
read that record instead of reverse-engineering the compact model.
`strip_to_compact(model)` is `strip(model).model`.
"""

import collections
import dataclasses

import numpy as np
import tensorflow as tf

from tfsdn.common import channel_order
from tfsdn.common import checks
from tfsdn.common import deploy_target
from tfsdn.common import provenance
from tfsdn import graph
from tfsdn import layout
from tfsdn.compat import keras
from tfsdn.compat import require_functional
from tfsdn.prunable_concat_conv import PrunableConcatConv
from tfsdn.prune import strip_wrappers


@dataclasses.dataclass
class StrippedLayer:
  """What the strip step kept of one `PrunableConcatConv`.

  Attributes:
    name: The layer's name; its compact Conv2D has the same name.
    offered: One `(source layer name, channel)` per input channel the layer
      is offered (its concatenated input, in order).
    live: Boolean vector over those channels: True where the layer reads it.
    filters: Output channels before the strip.
    filters_computed: Output channels the compact conv computes (fewer when
      no consumer reads some of them). A layer whose output no one reads is
      removed: 0 filters computed, no live input, no compact layers.
    compact_layers: Names of the compact layers holding its parameters (the
      BatchNormalization and the Conv2D).
    prunes: What pruning its inputs removes: `"connections"` (dense
      connections: it reads feature maps other prunable layers read too,
      such as a block's concatenation) or `"width"` (it alone reads one
      layer's output, as the 3x3 conv after a DenseNet-B bottleneck: its
      pruned inputs are filters of that layer that strip removes).
  """
  name: str
  offered: list
  live: np.ndarray
  filters: int
  filters_computed: int
  compact_layers: tuple
  prunes: str = "connections"


@dataclasses.dataclass
class Stripped:
  """The result of the strip step.

  Attributes:
    model: The compact model (stock tf_keras layers and TF ops only).
    source_name: Name of the model that was stripped.
    layers: `StrippedLayer` per `PrunableConcatConv` name, in model order.
    source_channels: Output channels of every layer of the stripped
      (flattened) model before the strip: the feature maps each offers.
  """
  model: keras.Model
  source_name: str
  layers: dict
  source_channels: dict

  @property
  def pruned(self):
    """True if some layer reads fewer channels than it is offered."""
    return any(not layer.live.all() for layer in self.layers.values())


def _is_filter_prunable_conv(layer):
  return (type(layer) is keras.layers.Conv2D and layer.groups == 1 and  # pylint: disable=unidiomatic-typecheck
          layer.data_format == "channels_last")


def channel_liveness(model):
  """Which channels of each tensor some live consumer reads.

  Walks the graph from the outputs back to the inputs, so that a feature map
  read by no consumer frees its producer and, transitively, whatever only
  that producer read.

  Args:
    model: A functional model without pruning wrappers.

  Returns:
    A dict from `id(keras_tensor)` to a boolean vector over its channels.
  """
  needed = {}

  def need(tensor, mask):
    current = needed.get(id(tensor))
    needed[id(tensor)] = mask.copy() if current is None else current | mask

  for output in model.outputs:
    need(output, np.ones(output.shape[-1] if output.shape.rank else 1, bool))
  for node, layer in reversed(graph.topological_nodes(model)):
    output = graph.node_output(node)
    out_need = needed.get(id(output))
    if out_need is None or not out_need.any():
      continue  # Nothing reads this layer: it is not built at all.
    inputs = graph.node_inputs(node)
    if isinstance(layer, PrunableConcatConv):
      live = layer.live_mask()
      for tensor, part in zip(inputs, _split(live, inputs)):
        need(tensor, part)
    elif graph.is_channel_concat(layer):
      for tensor, part in zip(inputs, _split(out_need, inputs)):
        need(tensor, part)
    elif graph.passes_channels(layer, node):
      need(inputs[0], out_need)
    else:
      for tensor in inputs:
        need(tensor, np.ones(graph.channels(tensor), bool))
  return needed


def _split(mask, tensors):
  bounds = np.cumsum([0] + [graph.channels(t) for t in tensors])
  return [mask[bounds[i]:bounds[i + 1]] for i in range(len(tensors))]


def strip_to_compact(model, slice_cost_macs=None, channel_reads=None,
                     max_concat_inputs=None, pool_first=None,
                     reuse_concats=None, fused_batch_norm=None,
                     check_function=True, target=None):
  """Returns a compact stock-Keras model without the pruned channels.

  Same as `strip(model, slice_cost_macs, channel_reads, max_concat_inputs,
  pool_first, reuse_concats, fused_batch_norm).model`; see `strip`.

  Example:

  ```python
  compact = tfsdn.strip_to_compact(pruned_model)
  compact.save("compact.keras")
  ```

  Args:
    model: A model pruned by tfsdn (see `strip`).
    slice_cost_macs: See `strip`.
    channel_reads: See `strip`.
    max_concat_inputs: See `strip`.
    pool_first: See `strip`.
    reuse_concats: See `strip`.
    fused_batch_norm: See `strip`.
    check_function: See `strip`.
    target: See `strip`.

  Returns:
    A new, flat functional tf_keras model.
  """
  return strip(model, slice_cost_macs, channel_reads, max_concat_inputs,
               pool_first, reuse_concats, fused_batch_norm,
               check_function=check_function, target=target).model


CHANNEL_READS = ("slice", "split", "gather")


def strip(model, slice_cost_macs=None, channel_reads=None,
          max_concat_inputs=None, pool_first=None, reuse_concats=None,
          fused_batch_norm=None, check_function=True, target=None):
  """Rebuilds a pruned model from stock layers and records what it kept.

  Every `PrunableConcatConv` becomes [channel slices ->] [Concatenate ->]
  BatchNormalization -> ReLU -> Conv2D, reading only its live input
  channels, with its BatchNormalization parameters and kernel sliced. The
  filters of each producer are ordered so that what each consumer reads is
  few contiguous ranges (`tfsdn.layout`), each read with a slice shared by
  all consumers that read it; the kernels and BatchNormalizations that
  read a producer follow its order. A feature map that no consumer reads
  any more is not computed at all: its producer loses that filter and every
  consumer's channel indices are remapped, repeatedly, until nothing more
  can be removed. The compact model
  uses only tf_keras layers and TF ops, loads with
  `tf_keras.models.load_model` without custom objects and serves without
  tfsdn. In inference mode it computes the same function as the pruned
  model.

  `slice_cost_macs` trades MACs for fewer ops, for runtimes and batch sizes
  where an op's fixed cost counts (LiteRT or ONNX Runtime at batch 1): a
  layer then also reads the channels in a gap between two ranges it needs
  when they cost it at most `slice_cost_macs` MACs, and multiplies them
  by zero kernel rows, so one slice and one concatenation input fewer; and
  it reads a range that an earlier layer already reads (its slice is
  shared) instead of a narrower one of its own when the extra channels
  cost it at most as much, so layers reading nested prefixes of different
  lengths (`UpdateScores(nested=True)`) share slices. The
  function is unchanged (a zero row adds exactly 0 for finite
  activations); the model report counts the MACs and parameters the
  compact model executes and stores, zero rows included.
  `benchmarks/deploy_speed.py --slice_cost_macs=...` measures a value on
  the target machine.

  `channel_reads="split"` reads the ranges of a feature map with one split
  op (`tf.split`: SPLIT_V in TFLite, Split in ONNX) at every boundary any
  reader needs, instead of one slice per range: one op per feature map
  instead of one per range, for more (smaller) concatenation inputs. The
  function and the record are the same.

  `channel_reads="gather"` concatenates every feature map a layer reads
  from, whole, and gathers its channels with one `tf.gather` on the
  channel axis: one op per layer, as in the dense model, whatever the
  ranges. It is meant for ONNX Runtime: `export_onnx` moves the gather to
  the channels-first graph, where it copies whole channel planes. Plain
  TensorFlow and XNNPACK gather channels-last slowly; use `"slice"` for
  them. A layer that gathers 16 or more channels gathers a multiple of 16
  (unread channels of the maps it reads, with zero kernel rows): ONNX
  Runtime runs a convolution in its blocked NCHWc layout only on such a
  count, and a DenseNet-40 (growth 12) ran 1.1x to 1.25x faster there so
  padded (`docs/deployment.md`).

  `max_concat_inputs=5` builds every concatenation of more inputs as
  concatenations of at most 5 (consecutive inputs, in groups shared by
  every layer that concatenates the same group), for XNNPACK, LiteRT's CPU
  delegate, which runs CONCATENATION only up to 5 inputs and leaves a
  larger one to LiteRT's own kernels, splitting the graph. The function
  and the record are the same. An all-live model stripped this way is the
  dense model with the same concatenations, to compare against.

  `pool_first=True` swaps a DenseNet transition's 1x1 convolution and the
  average pooling that alone reads it: BatchNormalization -> ReLU ->
  AveragePooling2D -> Conv2D. A 1x1 convolution without bias is the same
  linear map at every pixel, so it commutes with averaging pixels: the same
  function (up to float rounding), with the convolution on a quarter of
  the pixels after a 2x2 pooling (a DenseNet-40 has 20% of its MACs in
  its two transition convolutions). An all-live model stripped this way is
  the dense model to compare against.

  `reuse_concats=True` lets a layer's concatenation start from an earlier
  layer's when that one joins only pieces (whole maps or slices) that this
  layer also reads, as a DenseNet's running concatenation does: the
  earlier concatenation of the most channels, then the next, and the
  remaining pieces, with the BatchNormalization and kernel rows in that
  order. An all-live model stripped this way concatenates 2 inputs per
  layer, as a stock DenseNet does. Fewer concatenation inputs, the same
  function, MACs and parameters; reads widened by `slice_cost_macs`
  repeat more, so share more. Each concatenation still copies every
  channel it joins.

  `fused_batch_norm=False` builds every BatchNormalization of the model
  with `fused=False`: TensorFlow then computes it as a multiply and an add
  instead of its fused batch-norm kernel. With oneDNN (TensorFlow's CPU
  default) that kernel is fast only for a number of channels that is a
  multiple of 4, which pruning rarely leaves: a DenseNet block of 12
  BatchNormalization -> ReLU -> Conv2D layers took 8.3 to 9.1 ms at batch 1
  with no input channel count a multiple of 4, 5.4 to 6.4 ms with all of
  them multiples of 4, and 4.7 to 5.8 ms unfused either way
  (a benchmark since removed, in git history). The same function (up to float
  rounding); a TFLite conversion is the same graph either way (a multiply
  and an add); XLA fuses both alike. Keras 3 on TensorFlow computes
  BatchNormalization unfused already.

  **Choosing these options: `target`.** Each of the options above left at
  None is chosen for `target`, a `tfsdn.Target` (the runtime and batch size
  the model will be served at) by `tfsdn.common.deploy_target`'s cost model:
  `slice_cost_macs` from what one op and one MAC cost there (the built-in
  costs, or `tfsdn.calibrate(runtime, batch_size)` measured on the machine),
  `pool_first=True`, `reuse_concats=True`, unfused BatchNormalization, and
  `max_concat_inputs=5` for LiteRT; for ONNX Runtime one
  `channel_reads="gather"` per layer (not widened by costs; padded to a
  multiple of 16 channels, see above), fused BatchNormalization and no
  running concatenations. Without a target, the layout is chosen
  for `tfsdn.common.deploy_target.DEFAULT_TARGET`, TensorFlow at batch 1. An
  option given explicitly wins over the target's choice: for the exact
  reads (the MACs a `GlobalAllocation` budget planned) pass
  `channel_reads="slice", slice_cost_macs=0, pool_first=False` (with an
  ONNX target a gather would pad its reads). A compact model stripped with
  neither a target nor an option, exported in this process to another
  runtime or batch size (`export_onnx`, `export_tflite`,
  `export_saved_model(..., batch_size=b)`), is stripped again from `model`
  for that runtime by the export, unless either model's weights changed
  since (`tfsdn.common.provenance`).

  Example:

  ```python
  stripped = tfsdn.strip(pruned_model)
  served = tfsdn.strip(pruned_model, target=tfsdn.Target("onnx", 1))
  stripped.model.save("compact.keras")
  print(tfsdn.model_report(stripped))   # reads the record, builds nothing
  ```

  Args:
    model: A model pruned by tfsdn, still wrapped by tfmot or already passed
      through `tfmot.sparsity.keras.strip_pruning`. Nested functional models
      are inlined (`graph.flatten`).

    slice_cost_macs: The MACs one more slice costs in the target runtime,
      a number >= 0. 0 reads exactly the live channels with slices or
      splits: the fewest MACs (a gather pads its reads, see above).
      Above 0 the model needs a known input height and width. None: chosen
      for `target` (0 for a model of unknown image size or a gather).
    channel_reads: `"slice"`, `"split"` or `"gather"`, how ranges of
      channels are read (see above). None: chosen for `target` (`"gather"`
      for ONNX Runtime unless `slice_cost_macs` above 0 is given, else
      `"slice"`).
    max_concat_inputs: None for one concatenation per layer however many
      inputs it has (or 5 for a LiteRT target), or the most inputs of one
      concatenation, an integer >= 2 (see above).
    pool_first: If True, transitions pool before their 1x1 convolution
      (see above). A bool; None: True.
    reuse_concats: If True, concatenations start from earlier ones (see
      above). A bool; None: True.
    fused_batch_norm: If False, every BatchNormalization is built with
      `fused=False` (see above); if True, the ones strip builds use Keras'
      default (fused) and copied ones keep the `fused` of the layer they
      copy. A bool; None: False.
    check_function: If True (the default), the compact model and `model`
      are run in inference mode on one batch of random pixels and must
      agree (`tfsdn.common.checks.same_function`: 1e-4 in float32); False skips
      that check, for speed. A bool.
    target: A `tfsdn.Target` the options left at None are chosen for, or
      None (see above).

  Returns:
    A `Stripped`: the compact model and, per `PrunableConcatConv`, what it
    kept.

  Raises:
    TypeError: for Keras 3 objects and subclassed models.
    ValueError: if the model has no `PrunableConcatConv`, or a layer has an
      invalid score or no live input channel, or for a negative or
      non-finite `slice_cost_macs` (or one above 0 on a model of unknown
      input height or width), an unknown `channel_reads` or a
      `max_concat_inputs` that is not None or an integer >= 2.
    TypeError: if `pool_first`, `reuse_concats`, `fused_batch_norm` or
      `check_function` is not a bool, or `target` not a `tfsdn.Target`.
    RuntimeError: if `check_function` finds the compact model computing
      another function.
  """
  require_functional(model)
  check_function = checks.boolean("check_function", check_function)
  original = model
  by_default = target is None and all(option is None for option in (
      slice_cost_macs, channel_reads, max_concat_inputs, pool_first,
      reuse_concats, fused_batch_norm))
  (slice_cost_macs, channel_reads, max_concat_inputs, pool_first,
   reuse_concats, fused_batch_norm) = _layout_options(
       model, target, slice_cost_macs, channel_reads, max_concat_inputs,
       pool_first, reuse_concats, fused_batch_norm)
  pool_first = checks.boolean("pool_first", pool_first)
  reuse_concats = checks.boolean("reuse_concats", reuse_concats)
  fused_batch_norm = checks.boolean("fused_batch_norm", fused_batch_norm)
  slice_cost_macs = checks.real("slice_cost_macs", slice_cost_macs, low=0)
  if channel_reads not in CHANNEL_READS:
    raise ValueError(f"channel_reads must be one of {CHANNEL_READS}. "
                     f"Received: channel_reads={channel_reads!r}")
  max_concat_inputs = checks.concat_limit(max_concat_inputs)
  model = graph.flatten(strip_wrappers(model))
  nodes = graph.topological_nodes(model)
  if not any(isinstance(layer, PrunableConcatConv) for _, layer in nodes):
    raise ValueError(
        f"Model {model.name!r} has no PrunableConcatConv layer, so there is "
        "nothing to strip. Build it with tfsdn.densenet or convert it with "
        "tfsdn.make_prunable, then prune it.")
  needed = channel_liveness(model)
  sources = graph.channel_sources(model)
  orders = layout.filter_orders(model, nodes, needed)
  reads = _Reads(gather=channel_reads == "gather",
                 max_inputs=max_concat_inputs, reuse=reuse_concats)
  if channel_reads == "split":
    # A first build finds every range read of each feature map; the second
    # splits each map once at all of their boundaries.
    _build(model, nodes, needed, sources, orders, slice_cost_macs, reads,
           pool_first, fused_batch_norm)
    reads = _Reads(split_at=reads.recorded, max_inputs=max_concat_inputs,
                   reuse=reuse_concats)
  compact, record = _build(model, nodes, needed, sources, orders,
                           slice_cost_macs, reads, pool_first,
                           fused_batch_norm)
  _classify(record, nodes, sources)
  source_channels = {
      layer.name: (graph.channels(graph.node_output(node))
                   if graph.node_output(node).shape.rank else 1)
      for node, layer in nodes}
  if check_function:
    # A model built under a tf.distribute strategy cannot run tfmot's
    # wrappers outside a replica context (their mask update fails on
    # mirrored variables): its tfmot-stripped copy, which holds the same
    # masked weights, is the reference then.
    reference = (model if getattr(original, "_distribution_strategy", None)
                 is not None else original)
    checks.same_function(
        reference, compact, _predict, [t.shape for t in original.inputs],
        low_precision=original.compute_dtype != "float32")
  if by_default:
    provenance.remember(compact, original)
  return Stripped(compact, model.name, record, source_channels)


def _layout_options(model, target, slice_cost_macs, channel_reads,
                    max_concat_inputs, pool_first, reuse_concats,
                    fused_batch_norm):
  """The layout options: those given, the rest chosen for `target`."""
  known = all(t.shape.rank == 4 and None not in tuple(t.shape[1:3])
              for t in model.inputs)
  options = deploy_target.resolve_options(target, dict(
      slice_cost_macs=slice_cost_macs, channel_reads=channel_reads,
      max_concat_inputs=max_concat_inputs, pool_first=pool_first,
      reuse_concats=reuse_concats, fused_batch_norm=fused_batch_norm), known)
  return (options["slice_cost_macs"], options["channel_reads"],
          options["max_concat_inputs"], options["pool_first"],
          options["reuse_concats"], options["fused_batch_norm"])


def _predict(model, images):
  images = [tf.constant(i) for i in images]
  outputs = model(images if len(images) > 1 else images[0], training=False)
  return [np.asarray(o) for o in tf.nest.flatten(outputs)]


def _pooled_transitions(model, nodes):
  """`{id(conv output): (pooling node, pooling layer)}` for `pool_first`.

  A `PrunableConcatConv` with a 1x1 kernel, stride 1 and no bias whose
  output only one 2-D average pooling reads (channels last), and is not a
  model output: pooling its input first gives the same function.
  """
  consumers = graph.consumers(nodes)
  outputs = {id(t) for t in model.outputs}
  found = {}
  for node, layer in nodes:
    if not isinstance(layer, PrunableConcatConv) or graph.is_input(node):
      continue
    output = graph.node_output(node)
    readers = consumers.get(id(output), [])
    if (id(output) in outputs or len(readers) != 1 or
        tuple(layer.kernel_size) != (1, 1) or
        tuple(layer.strides) != (1, 1) or layer.conv.use_bias):
      continue
    pool_node, pool = readers[0]
    if (type(pool) is keras.layers.AveragePooling2D and  # pylint: disable=unidiomatic-typecheck
        pool.data_format == "channels_last" and
        len(graph.node_inputs(pool_node)) == 1):
      found[id(output)] = (pool_node, pool)
  return found


def _build(model, nodes, needed, sources, orders, slice_cost_macs, reads,
           pool_first=False, fused_batch_norm=True):
  """The compact model and the record, reading channels through `reads`.

  With `fused_batch_norm` False, every BatchNormalization is unfused.
  """

  def copy_layer(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
      # `fused` is not in a layer's config: set it, or keep the source's.
      return graph.copy_layer(layer, fused=layer.fused and fused_batch_norm)
    return graph.copy_layer(layer)

  record = {}
  new = {}      # id(original tensor) -> new tensor
  present = {}  # id(original tensor) -> original channel indices it carries
  new_inputs = []
  pooled = _pooled_transitions(model, nodes) if pool_first else {}
  built_pools = set()  # ids of pooling nodes built inside a transition
  for node, layer in nodes:
    if id(node) in built_pools:
      continue
    output = graph.node_output(node)
    if graph.is_input(node):
      tensor = graph.input_like(node, layer)
      new_inputs.append(tensor)
      new[id(output)] = tensor
      present[id(output)] = np.arange(output.shape[-1] or 0)
      continue
    out_need = needed.get(id(output))
    inputs = graph.node_inputs(node)
    if out_need is None or not out_need.any():
      if isinstance(layer, PrunableConcatConv):  # Removed: nobody reads it.
        record[layer.name] = StrippedLayer(
            layer.name, [s for t in inputs for s in sources[id(t)]],
            np.zeros(layer.input_channels, bool), layer.filters, 0, ())
      continue
    if isinstance(layer, PrunableConcatConv):
      keep_filters = orders.get(layer.name, np.flatnonzero(out_need))
      pool_node, pool = pooled.get(id(output), (None, None))
      # With the pooling first, the conv computes the pooling's output.
      outputs = [output]
      if pool is not None:
        built_pools.add(id(pool_node))
        outputs.append(graph.node_output(pool_node))
      x = _compact_concat_conv(
          layer, [new.get(id(t)) for t in inputs],
          [present.get(id(t)) for t in inputs], [id(t) for t in inputs],
          keep_filters, reads, slice_cost_macs, tuple(outputs[-1].shape[1:3]),
          None if pool is None else graph.copy_layer(pool), fused_batch_norm)
      for tensor in outputs:
        new[id(tensor)] = x
        present[id(tensor)] = keep_filters
      record[layer.name] = StrippedLayer(
          layer.name, [s for t in inputs for s in sources[id(t)]],
          layer.live_mask(), layer.filters, len(keep_filters),
          (f"{layer.name}_bn", layer.name))
    elif _is_filter_prunable_conv(layer):
      carried = _require_all(inputs, present, layer)
      keep = orders.get(layer.name, np.flatnonzero(out_need))
      config = layer.get_config()
      config["filters"] = len(keep)
      conv = type(layer).from_config(config)
      new[id(output)] = graph.call_like(node, conv, new)
      weights = layer.get_weights()
      conv.set_weights([weights[0][:, :, carried][..., keep]] +
                       [w[keep] for w in weights[1:]])
      present[id(output)] = keep
    elif graph.is_channel_concat(layer) and output.shape.rank == 4:
      # Inputs that no one reads any more were not built: concatenate the
      # rest, and remember which original channels the result carries.
      offsets = np.cumsum([0] + [graph.channels(t) for t in inputs])
      built = [i for i, t in enumerate(inputs) if id(t) in new]
      parts = reads.concats.reused_prefix([new[id(inputs[i])] for i in built])
      new[id(output)] = reads.concatenate(
          parts, layer.name, layer.dtype_policy.name,
          lambda: graph.copy_layer(layer))
      present[id(output)] = np.concatenate(
          [present[id(inputs[i])] + offsets[i] for i in built])
    elif layout.passes_channel_order(layer, node):
      carried = present[id(inputs[0])]
      copy = copy_layer(layer)
      new[id(output)] = graph.call_like(node, copy, new)
      copy.set_weights([w[carried] for w in layer.get_weights()])
      present[id(output)] = carried
    elif isinstance(layer, keras.layers.Dense):
      carried = _require_all(inputs, present, layer)
      copy = copy_layer(layer)
      new[id(output)] = graph.call_like(node, copy, new)
      weights = layer.get_weights()
      copy.set_weights([weights[0][carried]] + weights[1:])
      present[id(output)] = np.arange(output.shape[-1])
    else:
      for tensor in inputs:
        if not np.array_equal(_require_all([tensor], present, layer),
                              np.arange(graph.channels(tensor))):
          raise AssertionError(
              f"{layer.name} needs its input channels in their order")
      copy = copy_layer(layer)
      new[id(output)] = graph.call_like(node, copy, new)
      copy.set_weights(layer.get_weights())
      present[id(output)] = np.arange(
          output.shape[-1] if output.shape.rank else 1)
  return graph.model_like(model, new_inputs, new), record


def _classify(record, nodes, sources):
  """Sets `prunes` of each record: "width" if it alone reads one layer.

  A layer prunes a width when everything it is offered comes from one
  producer that no other layer reads (through concatenations, gathers and
  channel-wise layers such as dropout): then each pruned input is a filter
  of that producer that strip removes.
  """
  readers = {}
  for node, layer in nodes:
    if graph.is_input(node) or graph.is_channel_concat(layer) or (
        graph.is_channel_gather(layer, node)) or (
            graph.passes_channels(layer, node)):
      continue
    for tensor in graph.node_inputs(node):
      for source in {s for s, _ in sources[id(tensor)]}:
        readers.setdefault(source, set()).add(layer.name)
  for layer in record.values():
    offered = {s for s, _ in layer.offered}
    if len(offered) == 1 and readers.get(next(iter(offered))) == {layer.name}:
      layer.prunes = "width"


def _require_all(inputs, present, layer):
  """The order of the channels of `inputs[0]`, checked to be all there."""
  for tensor in inputs:
    if len(present[id(tensor)]) != graph.channels(tensor):
      raise AssertionError(
          f"{layer.name} needs all channels of its input but only "
          f"{len(present[id(tensor)])} of {graph.channels(tensor)} remain")
  return present[id(inputs[0])] if inputs else None


class _Reads:
  """Reads channel ranges of feature maps: a slice per range, splits, or a gather.

  With `split_at` None, every range is a slice, shared by all layers that
  read it, and `recorded` collects each map's range boundaries. With
  `split_at` (a `recorded` of an earlier build), each map is split once at
  all its boundaries and a range is the run of pieces it covers. With
  `gather`, `concat` takes whole maps and gathers the channels read. With
  `max_inputs`, a concatenation of more inputs is built from concatenations
  of at most `max_inputs`, each group made once for all layers. With
  `reuse`, a layer's concatenation starts from earlier ones (`concats`).
  """

  def __init__(self, split_at=None, gather=False, max_inputs=None,
               reuse=False):
    self.split_at = split_at
    self.gather = gather
    self.max_inputs = max_inputs
    self.concats = channel_order.ConcatReuse(graph.channels, reuse)
    self.recorded = collections.defaultdict(set)
    self._made = {}
    self._groups = {}  # ids of the inputs of a group -> its concatenation
    self._read = collections.defaultdict(set)  # key -> ranges read so far

  def read(self, key, tensor, ranges):
    """The parts of `tensor` (original tensor id `key`) covering `ranges`."""
    parts = []
    for start, stop in ranges:
      if (start, stop) == (0, graph.channels(tensor)):
        parts.append(tensor)
        continue
      self.recorded[key].update((start, stop))
      if self.split_at is None:
        if (key, start, stop) not in self._made:
          self._made[(key, start, stop)] = tensor[:, :, :, start:stop]
        parts.append(self._made[(key, start, stop)])
      else:
        pieces, cuts = self._pieces(key, tensor)
        parts += pieces[cuts.index(start):cuts.index(stop)]
    return parts

  def covering(self, key, ranges, max_gap):
    """`ranges` of map `key`, each widened to one an earlier reader read.

    A range is replaced by the narrowest range of the same map that an
    earlier reader read, covers it and holds at most `max_gap` channels
    more: one slice fewer for channels read with zero kernel rows, as
    `channel_order.merge_runs` trades within one reader. So readers of
    nested prefixes of different lengths share slices. Ranges stay sorted
    and disjoint (a replacement that would overlap is not made). Splits
    and gathers read the same ranges, so every layout is the same model.
    """
    if max_gap <= 0:
      return list(ranges)
    ranges, result = list(ranges), []
    for i, (start, stop) in enumerate(ranges):
      if result and stop <= result[-1][1]:
        continue  # Inside the slice the range before was widened to.
      earlier = [(s, e) for s, e in self._read[key]
                 if s <= start and stop <= e and
                 (e - s) - (stop - start) <= max_gap and
                 (not result or s >= result[-1][1]) and
                 all(e <= s2 or e >= e2 for s2, e2 in ranges[i + 1:])]
      result.append(min(earlier, key=lambda r: (r[1] - r[0], r[0]),
                        default=(start, stop)))
    return result

  def concat(self, name, dtype, inputs):
    """The channels read of every input: `inputs` are (key, tensor, ranges).

    Returns:
      (tensor, order): `order[i]` is the position, among the channels read
      in the order of `inputs` and their ranges, of the tensor's channel i.
      With `reuse`, an earlier concatenation of some of the same parts
      stands in for them (first), as a DenseNet's running concatenation
      does: the channels come in another order, which the caller's
      BatchNormalization and kernel rows follow.
    """
    inputs = [(key, tensor, r) for key, tensor, r in inputs if len(r)]
    for key, tensor, r in inputs:
      self._read[key].update(
          rng for rng in r if rng != (0, graph.channels(tensor)))
    if not self.gather:
      parts = [part for key, tensor, r in inputs
               for part in self.read(key, tensor, r)]
      parts, order = self.concats.reused(parts)
      return self.concatenate(parts, name, dtype), order
    whole = [tensor for _, tensor, _ in inputs]
    offsets = np.cumsum([0] + [graph.channels(t) for t in whole])
    index = np.concatenate([offsets[j] + channel_order.positions(r)
                            for j, (_, _, r) in enumerate(inputs)])
    whole, placed = self.concats.reused(whole)
    x = self.concatenate(whole, name, dtype)
    index = np.argsort(placed)[index]  # Where each channel read now is.
    order = np.arange(len(index))
    if np.array_equal(index, np.arange(offsets[-1])):
      return x, order
    return tf.gather(x, index.tolist(), axis=-1, name=f"{name}_gather"), order

  def concatenate(self, parts, name, dtype, make_last=None):
    """`parts` concatenated on channels, at most `max_inputs` at a time
    (`channel_order.bounded_concat`).

    The last concatenation is `make_last()` or `{name}_concat`. Each
    concatenation but `make_last()` is made once for the same parts, and
    shared by every layer that concatenates them.
    """

    def concat(group, group_name):
      if group_name is None and make_last:
        return self.concats.joined(make_last()(group), group)
      key = tuple(id(part) for part in group)
      if key not in self._groups:
        self._groups[key] = self.concats.joined(keras.layers.Concatenate(
            name=group_name or f"{name}_concat", dtype=dtype)(group), group)
      return self._groups[key]

    return channel_order.bounded_concat(parts, self.max_inputs, concat, name)

  def _pieces(self, key, tensor):
    if key not in self._made:
      cuts = sorted(self.split_at[key] | {0, graph.channels(tensor)})
      pieces = tf.split(tensor, np.diff(cuts).tolist(), axis=-1)
      self._made[key] = (pieces, cuts)
    return self._made[key]


def _compact_concat_conv(layer, inputs, present_inputs, keys, keep_filters,
                         reads, slice_cost_macs, output_size, pool=None,
                         fused_batch_norm=True):
  """Stock layers computing `layer` on its live inputs and computed filters.

  With `pool` (an average pooling layer, for `pool_first`), the layer
  computes `pool` of its output: the pooling goes before the convolution.
  With `fused_batch_norm` False, its BatchNormalization is unfused.

  Reads, of every input, the ranges of channels it needs (through `reads`,
  shared with other layers; `keys` name the inputs; ranges merged across
  gaps costing at most
  `slice_cost_macs`), concatenates them, and orders its BatchNormalization
  and kernel rows the same way. Channels read but not live get zero kernel
  rows.
  """
  live = layer.live_channels()
  if not len(live):
    raise ValueError(f"{layer.name} has no live input channel left.")
  max_gap = channel_order.max_gap(slice_cost_macs, output_size,
                                  layer.kernel_size, len(keep_filters),
                                  layer.name)
  offsets = np.cumsum([0] + list(layer.input_channel_counts))
  present, all_ranges = [], []
  for j, carried in enumerate(present_inputs):
    local = live[(live >= offsets[j]) & (live < offsets[j + 1])] - offsets[j]
    if carried is None:  # An input nobody reads any more is not computed.
      if len(local):
        raise AssertionError(f"{layer.name} reads a removed feature map")
      continue
    position = {int(c): p for p, c in enumerate(carried)}
    if any(int(c) not in position for c in local):
      raise AssertionError(f"{layer.name} reads a channel that was removed")
    where = np.sort([position[int(c)] for c in local]).astype(int)
    present.append(j)
    all_ranges.append(reads.covering(keys[j], channel_order.merge_runs(
        channel_order.runs(where), len(carried), max_gap), max_gap))
  if reads.gather:  # One op whatever it reads: a count ONNX Runtime blocks.
    all_ranges = channel_order.pad_to_multiple(
        all_ranges, [len(present_inputs[j]) for j in present],
        channel_order.GATHER_CHANNEL_MULTIPLE)
  reading, read = [], []
  for j, ranges in zip(present, all_ranges):
    reading.append((keys[j], inputs[j], ranges))
    read.append(np.asarray(present_inputs[j], int)[
        channel_order.positions(ranges)] + offsets[j])
  read = np.concatenate(read)  # Offered channel of each channel read.
  dtype = layer.dtype_policy.name
  x, order = reads.concat(layer.name, dtype, reading)
  read = read[order]
  batch_norm = keras.layers.BatchNormalization(
      momentum=layer.bn_momentum, epsilon=layer.bn_epsilon,
      fused=None if fused_batch_norm else False, name=f"{layer.name}_bn",
      dtype=dtype)
  x = batch_norm(x)
  batch_norm.set_weights([w[read] for w in layer.batch_norm.get_weights()])
  x = keras.layers.ReLU(name=f"{layer.name}_relu", dtype=dtype)(x)
  if pool is not None:
    x = pool(x)
  conv = keras.layers.Conv2D(
      len(keep_filters), layer.kernel_size, strides=layer.strides,
      padding=layer.padding, use_bias=False, name=layer.name, dtype=dtype)
  x = conv(x)
  kernel = layer.conv.get_weights()[0][:, :, read, :][..., keep_filters]
  kernel[:, :, ~np.isin(read, live)] = 0.0  # Read only to save a slice.
  conv.set_weights([kernel])
  return x
