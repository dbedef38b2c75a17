"""The evidence arms' names and timing, without TensorFlow.

Shared by `arms.py` (the tfmot path's arms) and `evidence_keras3.py` (the
Keras 3 runner, which must import on a machine without TensorFlow). See
`arms.py` for what each arm does.
"""

import dataclasses

KINDS = ("dense", "el1_layer", "el1_nested", "el1_global", "bn_gamma_global",
         "weight_l1_global", "random_matched", "tfmot_unstructured",
         "narrow_dense", "retrained", "retrained_layer")
CRITERION = {"el1_layer": "expected_l1", "el1_nested": "expected_l1",
             "el1_global": "expected_l1",
             "bn_gamma_global": "bn_gamma", "weight_l1_global": "weight_l1",
             "random_matched": "random"}
# Arms whose result another arm of the same seed and budget needs first.
NEEDS = {"random_matched": "el1_global", "retrained": "el1_global",
         "retrained_layer": "el1_layer"}
FROM_SCRATCH = ("narrow_dense", "retrained", "retrained_layer")


@dataclasses.dataclass(frozen=True)
class Arm:
  kind: str
  keep: float = 1.0

  @property
  def name(self):
    return self.kind if self.kind == "dense" else f"{self.kind}@{self.keep:g}"

  @property
  def criterion(self):
    return CRITERION.get(self.kind, "expected_l1")

  @property
  def needs(self):
    kind = NEEDS.get(self.kind)
    return Arm(kind, self.keep) if kind else None


def parse(name):
  """`Arm` from `KIND` or `KIND@KEEP`; ValueError naming a bad one."""
  kind, _, keep = name.partition("@")
  if kind not in KINDS:
    raise ValueError(f"Unknown arm {name!r}: the kinds are {', '.join(KINDS)}")
  if kind == "dense":
    if keep:
      raise ValueError(f"The dense arm has no budget. Received: {name!r}")
    return Arm("dense")
  try:
    value = float(keep)
  except ValueError:
    value = float("nan")
  if not 0.0 < value < 1.0:
    raise ValueError(
        f"Arm {name!r} needs a budget KIND@KEEP with KEEP in (0, 1), the "
        "fraction of the dense MACs kept, e.g. el1_global@0.45")
  return Arm(kind, value)


def ordered(arms):
  """Arms with every arm's prerequisite (added if missing) before it."""
  result = []
  for arm in arms:
    if arm.needs and arm.needs not in result:
      result.append(arm.needs)
    if arm not in result:
      result.append(arm)
  return result


def stage_epochs(config):
  """Branch epochs (0 = the first after the trunk) of the first and last stage."""
  return config["prune_begin_epoch"] or 0, (
      config["prune_end_epoch"] if config["prune_end_epoch"] is not None
      else config["num_stages"] - 1)
