r"""Medians over separate runs of benchmarks/deploy_speed.py.

One run's ratios move by up to 0.3x between runs on this machine, so the
targets are read as medians of three runs (separate processes, same
command). This reads the runs' JSON files and writes, per compact model and
(runtime, batch size), the median compact / dense ratio and every run's
ratio, and the best compact model per (runtime, batch) by median. Runtimes
that only some runs timed get the median of those runs, with their count.
With --models=REGEX only the models whose names match count, dense ones
included: each run's ratios are taken again from its images/s against the
fastest matching dense model (say, --models='.*(?<!_r)' to leave out the
--reuse_concats variants). With --best_mode=tf,tf_xla each model runs in
the fastest of those runtimes (as a user picks plain TensorFlow or XLA):
per run and batch size, the fastest compact model against the fastest
dense model, each in its own fastest runtime, and that ratio's median as a
fraction of the ideal (MAC ratio). With --targets it checks the
deployment-speed targets (`SPEED_TARGETS` and the constants after it)
against the medians: each target's figure, the compact model it comes
from, and whether it is met.

  python benchmarks/deploy_speed_median.py --runs=docs/deploy_speed_run1.json,\
docs/deploy_speed.json,docs/deploy_speed_run3.json \
      --output=docs/deploy_speed_median.json
"""

import json
import re

from absl import app
from absl import flags
import numpy as np

from tfsdn.files import write_json

FLAGS = flags.FLAGS


def _define_flags():
  # Defined only when run as a script, so tests can import `medians`
  # next to deploy_speed, whose flags share these names.
  flags.DEFINE_list("runs", None, "deploy_speed.py JSON files, one per run.",
                    required=True)
  flags.DEFINE_string("output", None, "Optional JSON of the medians.")
  flags.DEFINE_string("models", None, "Optional regular expression: only "
                      "the models (dense and compact) whose names match it.")
  flags.DEFINE_list("best_mode", [], "Optional runtimes (say tf,tf_xla): "
                    "also the fastest compact model against the fastest "
                    "dense model, each in the fastest of these runtimes.")
  flags.DEFINE_bool("targets", False, "Also check the deployment-speed "
                    "targets against the medians.")


# The deployment-speed targets: the best compact model's median ratio to
# the fastest dense model in the same runtime and precision, at least...
SPEED_TARGETS = (("TF plain, batch 64", "tf@64", 1.4),
                 ("LiteRT float32, batch 64", "litert@64", 1.4),
                 ("ONNX Runtime, batch 64", "onnx@64", 1.4),
                 ("ONNX Runtime, batch 1", "onnx@1", 1.3),
                 ("LiteRT int8, batch 1", "litert_int8@1", 1.4))
# ... and at batch 1 at least 1.0 (never slower) in every runtime timed.
NEVER_SLOWER_AT_BATCH = 1
# Each model in its fastest TF mode, batch 64: at least this much of the
# ideal (MAC) ratio.
TF_MODES = ("tf", "tf_xla", "tf_fusible")
TF_OF_IDEAL = ("best TF mode, batch 64, of the ideal", "64", 0.85)
# The int8 model of the LiteRT int8 batch-1 target: test accuracy (on at
# least INT8_ACCURACY_IMAGES images) within this many points of the float
# (Keras) model's, and its file at most this fraction of the smallest
# dense int8 file.
INT8_ACCURACY_POINTS = 1.0
INT8_ACCURACY_IMAGES = 1000
INT8_FILE_RATIO = 0.55


def _numbers_as_floats(value):
  """`value` with every number a float: 0 and 0.0 are the same cost."""
  if isinstance(value, dict):
    return {k: _numbers_as_floats(v) for k, v in value.items()}
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  return value


def _speeds(run, keep):
  """`{model: {runtime@batch: images/s}}` of the run's models that `keep`."""
  speeds = {}
  for key, speed in run["images_per_second"].items():
    model, timed = key.split("/", 1)
    if keep(model):
      speeds.setdefault(model, {})[timed] = speed
  return speeds


def _fastest_dense(speeds, timed):
  """`(images/s, model)` of the fastest dense model in `speeds` timed at
  `timed` (runtime@batch), or None."""
  return max(((s[timed], m) for m, s in speeds.items()
              if m.startswith("dense") and timed in s), default=None)


def restricted(run, pattern):
  """`run` with only the models whose names match `pattern` (fully).

  Each compact model's ratio is taken again from the run's images/s,
  against the fastest matching dense model of each runtime and batch size,
  and the ideal (MAC ratio) from the matching models' MACs.

  Raises:
    ValueError: if no dense or no compact model matches.
  """
  speeds = _speeds(run, re.compile(pattern).fullmatch)
  denses = [m for m in speeds if m.startswith("dense")]
  compacts = [m for m in speeds if not m.startswith("dense")]
  if not denses or not compacts:
    raise ValueError(f"models={pattern!r} matches dense models {denses} "
                     f"and compact models {compacts}: need both")
  by_model = {model: {timed: speed / _fastest_dense(speeds, timed)[0]
                      for timed, speed in speeds[model].items()}
              for model in compacts}
  macs = {m: v for m, v in run["macs"].items() if m in speeds}
  # The ideal as deploy_speed.py takes it, among the matching models.
  ideal = (min(macs[m] for m in denses if m in macs) /
           min(macs[m] for m in compacts if m in macs))
  return dict(run, speedup_by_model=by_model, macs=macs,
              ideal_speedup_mac_ratio=ideal)


def medians(runs):
  """`{model: {runtime@batch: {"median", "runs"}}}` and the best per key.

  Args:
    runs: The parsed JSON of each run.

  Returns:
    `(by_model, best)`.

  Raises:
    ValueError: if the runs were made with different patterns or compact
      models (slice costs), which would make their ratios incomparable.
  """
  if not runs:
    raise ValueError("Need at least one run. Received: runs=[]")
  for field in ("patterns", "slice_cost_macs", "macs"):
    values = {json.dumps(_numbers_as_floats(run.get(field)), sort_keys=True)
              for run in runs}
    if len(values) > 1:
      raise ValueError(f"The runs differ in {field!r}: {sorted(values)}")
  by_model = {}
  for run in runs:
    for model, ratios in run["speedup_by_model"].items():
      for key, ratio in ratios.items():
        by_model.setdefault(model, {}).setdefault(key, []).append(ratio)
  by_model = {model: {key: {"median": float(np.median(values)),
                            "runs": values}
                      for key, values in sorted(ratios.items())}
              for model, ratios in by_model.items()}
  best = {}
  for key in sorted({k for ratios in by_model.values() for k in ratios}):
    model = max((m for m in by_model if key in by_model[m]),
                key=lambda m, key=key: by_model[m][key]["median"])
    best[key] = {"model": model, "median": by_model[model][key]["median"],
                 "runs": len(by_model[model][key]["runs"])}
  return by_model, best


def fastest_dense(runs):
  """`{runtime@batch: {"median", "models"}}`: the median over runs of the
  fastest dense model's images/s (among the models in each run's "macs",
  which `restricted` narrows), and which model that was in each run."""
  fastest = {}
  for run in runs:
    speeds = _speeds(run, lambda model, run=run: model in run["macs"])
    for timed in sorted({t for s in speeds.values() for t in s}):
      found = _fastest_dense(speeds, timed)
      if found:
        fastest.setdefault(timed, []).append(found)
  return {key: {"median": float(np.median([s for s, _ in found])),
                "models": [m for _, m in found]}
          for key, found in fastest.items()}


def best_mode(runs, runtimes):
  """`{batch: {...}}`: the fastest compact model against the fastest dense
  model, each in the fastest of `runtimes`, per run and its median.

  Each entry holds "median" (of the runs' ratios), "runs" (the ratios),
  "compact" and "dense" (per run, the `model/runtime` that was fastest),
  and "of_ideal" (the median over the median of the runs' ideal MAC
  ratios). Only the models in each run's "macs" count (`restricted`). A
  batch size that only some runs timed gets the median of those runs
  ("runs" lists them).

  Raises:
    ValueError: if a run did not time one of `runtimes`, or timed a batch
      size in them for only dense or only compact models.
  """
  found = {}
  for run in runs:
    speeds = _speeds(run, lambda model, run=run: model in run["macs"])
    timed = {t for s in speeds.values() for t in s}
    for runtime in runtimes:
      if not any(t.startswith(f"{runtime}@") for t in timed):
        raise ValueError(f"A run did not time runtime {runtime!r}; it "
                         f"timed {sorted(timed)}")
    batches = sorted({int(t.split("@")[1]) for t in timed
                      if t.split("@")[0] in runtimes})
    for batch in batches:
      fastest = {}
      for model, by_timed in speeds.items():
        kind = "dense" if model.startswith("dense") else "compact"
        for runtime in runtimes:
          speed = by_timed.get(f"{runtime}@{batch}")
          if speed is not None and speed > fastest.get(kind, (0,))[0]:
            fastest[kind] = (speed, f"{model}/{runtime}")
      if len(fastest) < 2:
        raise ValueError(f"A run timed only {sorted(fastest)} models at "
                         f"batch {batch} in {runtimes}: need both")
      entry = found.setdefault(str(batch), {"runs": [], "compact": [],
                                            "dense": [], "ideal": []})
      entry["runs"].append(fastest["compact"][0] / fastest["dense"][0])
      entry["compact"].append(fastest["compact"][1])
      entry["dense"].append(fastest["dense"][1])
      entry["ideal"].append(run["ideal_speedup_mac_ratio"])
  for entry in found.values():
    entry["median"] = float(np.median(entry["runs"]))
    entry["of_ideal"] = entry["median"] / float(np.median(entry.pop("ideal")))
  return found


def _row(target, figure, bound, at_least, model=None, detail=None):
  met = None if figure is None else (
      figure >= bound if at_least else figure <= bound)
  return {"target": target, "figure": figure,
          "at_least" if at_least else "at_most": bound, "met": met,
          "model": model, "detail": detail}


def targets(runs, best):
  """Each deployment-speed target, its figure, and whether it is met.

  Args:
    runs: The parsed JSON of each run (after `restricted`, if any).
    best: The best compact model per runtime@batch, from `medians`.

  Returns:
    A list of dicts with "target", "figure" (None where the runs did not
    measure it), "at_least" or "at_most", "met" (None when not measured,
    or measured on fewer than INT8_ACCURACY_IMAGES images), "model" (the
    compact model the figure comes from) and "detail".
  """
  rows = []
  for target, key, bound in SPEED_TARGETS:
    found = best.get(key, {})
    rows.append(_row(target, found.get("median"), bound, True,
                     found.get("model")))
  for key in sorted(k for k in best
                    if k.endswith(f"@{NEVER_SLOWER_AT_BATCH}")):
    runtime = key.split("@")[0]
    rows.append(_row(
        f"{runtime}, batch {NEVER_SLOWER_AT_BATCH}, never slower",
        best[key]["median"], 1.0, True, best[key]["model"]))
  # The TF modes every run timed (best_mode needs each in every run).
  modes = [m for m in TF_MODES if all(
      any(key.split("/", 1)[1].startswith(f"{m}@")
          for key in run["images_per_second"]) for run in runs)]
  target, batch, bound = TF_OF_IDEAL
  found = best_mode(runs, modes).get(batch) if modes else None
  if found:
    rows.append(_row(target, found["of_ideal"], bound, True,
                     ", ".join(sorted(set(found["compact"]))),
                     f"{found['median']:.2f}x in {'/'.join(modes)}"))
  else:
    rows.append(_row(target, None, bound, True))
  rows += _int8_rows(runs, best.get("litert_int8@1", {}).get("model"))
  return rows


def _int8_rows(runs, model):
  """The accuracy and file-size rows of the int8 `model` (None: untimed)."""
  drops, files, images = [], [], []
  for run in runs if model else ():
    accuracy = run.get("compact_accuracy") or {}
    if f"{model}/litert_int8" in accuracy and "keras" in accuracy:
      # Rounded: accuracies are fractions of a count (0.49 - 0.5 is not
      # quite -0.01 in floats).
      drops.append(round(100 * (accuracy[f"{model}/litert_int8"] -
                                accuracy["keras"]), 6))
      images.append(run["eval_images"])
    sizes = run.get("file_bytes", {})
    dense = [v for k, v in sizes.items()  # Those `restricted` kept.
             if k.startswith("dense") and k.endswith("/litert_int8") and
             k.split("/")[0] in run["macs"]]
    if f"{model}/litert_int8" in sizes and dense:
      files.append(sizes[f"{model}/litert_int8"] / min(dense))
  accuracy = _row("LiteRT int8 accuracy, points from float", None,
                  INT8_ACCURACY_POINTS, False, model)
  if drops:  # The median distance, so runs on either side do not cancel.
    accuracy = _row(accuracy["target"], float(np.median(np.abs(drops))),
                    INT8_ACCURACY_POINTS, False, model,
                    "int8 - float " + " / ".join(f"{d:+.2f}" for d in drops)
                    + f" points on {min(images)} test images")
    if min(images) < INT8_ACCURACY_IMAGES:
      accuracy["met"] = None  # Too few images to tell.
  size = _row("LiteRT int8 file, of the smallest dense int8 file",
              float(np.median(files)) if files else None, INT8_FILE_RATIO,
              False, model)
  return [accuracy, size]


def format_targets(rows):
  """A Markdown table of `targets`' rows."""
  lines = ["| target | figure (medians) | needed | met | compact model |",
           "| --- | ---: | ---: | --- | --- |"]
  for row in rows:
    if "at_least" in row:
      needed = f">= {row['at_least']:.2f}"
    else:
      needed = f"<= {row['at_most']:.2f}"
    # Three decimals: 1.3996 is not 1.40 for the check.
    figure = "-" if row["figure"] is None else f"{row['figure']:.3f}"
    if row["detail"]:
      figure += f" ({row['detail']})"
    met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
    if row["met"] is None and row["figure"] is not None:
      met = "too little data"  # Fewer test images than the target asks.
    lines.append(f"| {row['target']} | {figure} | {needed} | {met} | "
                 f"{row['model'] or '-'} |")
  return "\n".join(lines)


def main(argv):
  del argv
  runs = []
  for path in FLAGS.runs:
    with open(path) as f:
      runs.append(json.load(f))
  try:
    if FLAGS.models is not None:
      runs = [restricted(run, FLAGS.models) for run in runs]
    by_model, best = medians(runs)
    modes = best_mode(runs, FLAGS.best_mode) if FLAGS.best_mode else None
    checked = targets(runs, best) if FLAGS.targets else None
  except ValueError as e:
    raise app.UsageError(f"--runs: {e}") from e
  dense = fastest_dense(runs)
  models = list(by_model)
  print("| runtime@batch | dense img/s | " + " | ".join(models) + " | best |")
  print("|" + " --- |" * (len(models) + 3))
  for key, choice in best.items():
    cells = [f"{by_model[m][key]['median']:.2f}x" if key in by_model[m]
             else "-" for m in models]
    fastest = dense.get(key)
    fastest = (f"{fastest['median']:.1f} ({'/'.join(fastest['models'])})"
               if fastest else "-")
    print(f"| {key} | {fastest} | " + " | ".join(cells) +
          f" | {choice['model']} ({choice['runs']} runs) |")
  for batch, entry in (modes or {}).items():
    print(f"best of {','.join(FLAGS.best_mode)} at batch {batch}: "
          f"{entry['median']:.2f}x ({entry['of_ideal']:.2f} of ideal; runs "
          + " / ".join(f"{r:.2f}" for r in entry["runs"]) + "; compact "
          + ", ".join(entry["compact"]) + "; dense "
          + ", ".join(entry["dense"]) + ")")
  if checked is not None:
    print(format_targets(checked))
  if FLAGS.output:
    write_json(FLAGS.output, {"runs": FLAGS.runs, "models": FLAGS.models,
                              "speedup_by_model": by_model, "best": best,
                              "dense": dense, "best_mode": modes,
                              "targets": checked})


if __name__ == "__main__":
  _define_flags()
  app.run(main)
