"""Which pruned model a compact model was stripped from, while both live.

`strip(model)` without a target or layout options lays the compact model
out for `DEFAULT_TARGET` (TensorFlow, batch 1). Exported to another
runtime, that layout can be slower than the dense model (ONNX Runtime: 0.75x
to 0.92x on a DenseNet-40). So `strip` remembers, for a compact model built
with the defaults, the pruned model it came from and a digest of both
models (config and weights), and an export (`tfsdn.export.compact_for`,
`tfsdn.keras3.export`) strips that
pruned model again for its own runtime instead, when neither model changed
since (a compact model fine-tuned or edited after the strip is exported as
it is). The record lives in this process only (a weak reference on the compact
model): a compact model loaded from a file is exported in the layout it has.
It keeps the pruned model alive as long as the compact model lives.
Backend-free: both paths' `strip` and exports use it.
"""

import dataclasses
import hashlib
import json
import weakref

from absl import logging

from tfsdn.common import deploy_target

_SOURCES = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class Source:
  """The pruned model a default strip came from, and both models' digests."""
  pruned: object
  pruned_digest: str
  compact_digest: str


def weights_digest(model):
  """sha256 of `model`'s config and every weight of it, in order.

  The config too, so that a layer attribute changed after the strip (an
  epsilon, an activation) also counts as a change.
  """
  digest = hashlib.sha256()
  digest.update(json.dumps(model.get_config(), sort_keys=True,
                           default=repr).encode())
  for weight in model.get_weights():
    digest.update(str(weight.shape).encode())
    digest.update(weight.tobytes())
  return digest.hexdigest()


def remember(compact, pruned):
  """Records that `compact` is `pruned` stripped with the default layout."""
  _SOURCES[compact] = Source(pruned, weights_digest(pruned),
                             weights_digest(compact))


def unchanged_source(compact):
  """The pruned model `compact` was stripped from by default, or None.

  None also when either model changed (config or weights) since the strip.
  """
  source = _SOURCES.get(compact)
  if source is None:
    return None
  if (weights_digest(compact) != source.compact_digest or
      weights_digest(source.pruned) != source.pruned_digest):
    return None
  return source.pruned


def source_to_strip_again(compact, target):
  """The pruned model to strip again for `target` instead of `compact`.

  Returns:
    The pruned model `compact` was stripped from with the default layout,
    if neither model changed since and `target` lays out other
    than the default target; else None (export `compact` as it is).
  """
  pruned = unchanged_source(compact)
  if pruned is None or (deploy_target.strip_options(target) ==
                        deploy_target.strip_options(
                            deploy_target.DEFAULT_TARGET)):
    return None
  return pruned


def model_to_export(model, target, strip, prunable_layers):
  """The model an export to `target` serves: `model` or a strip of it.

  The one choice both paths' exports make (`tfsdn.export.compact_for`,
  `tfsdn.keras3.export`), each with its own `strip` and `prunable_layers`:

  - a pruned model (it has prunable layers): its compact model, stripped for
    `target`;
  - a compact model that `strip` built with its defaults in this process,
    unchanged since, and a `target` laid out other than the default: its
    pruned model stripped again for `target`;
  - any other model: `model` as it is.

  Args:
    model: The model to export.
    target: The `deploy_target.Target` of the export.
    strip: The path's `strip(model, target=...)`, returning a result with a
      `.model`.
    prunable_layers: The path's `prunable_layers(model)`.

  Returns:
    The model to export.
  """
  if prunable_layers(model):
    logging.info("Exporting %r, a pruned model: its compact model, stripped "
                 "for %s.", model.name, target)
    return strip(model, target=target).model
  pruned = source_to_strip_again(model, target)
  if pruned is None:
    return model
  logging.info("Exporting %r, stripped with the default layout: stripped "
               "again from its pruned model %r for %s.", model.name,
               pruned.name, target)
  return strip(pruned, target=target).model
