r"""The evidence table, paired comparisons and plot from evidence.py's results.

  python benchmarks/evidence_table.py --results_dir=docs/evidence/cifar10_d16

Reads RESULTS_DIR/seed*/ARM.json, writes RESULTS_DIR/table.md and
RESULTS_DIR/accuracy_vs_macs.png and prints the table. Comparisons pair
the two arms' predictions image by image over the seeds both have finished
(`paired.py`); the best tfsdn arm is the one with the highest mean
*validation* accuracy, never chosen on test.

With --recovery_trend: does the gap to dense close with recovery? Issue
37's rule, applied. Reads two evidence folders that differ only in the
recovery after the last stage (R epochs) and prints, per seed and pooled,
the gap `arm - baseline` at each R and Delta = gap(long) - gap(short),
paired per test image (both folders test on the same images), with
two-level bootstrap intervals (`paired.py`). The rule, fixed before the
runs (docs/evidence.md): the gap closes if Delta > 0 in every seed and the
pooled 95% interval is above 0; non-inferior if the long run's gap has its
lower bound above -(--margin) points. Writes the figures as JSON.

  python benchmarks/evidence_table.py --recovery_trend \
      --short=docs/evidence/cifar10_d16_recovery/r3 \
      --long=docs/evidence/cifar10_d16_recovery/r12 \
      --trend_json=docs/evidence/cifar10_d16_recovery/trend.json
"""

import json
import os

from absl import app
from absl import flags
import numpy as np

import arm_names
import paired
import results_io

FLAGS = flags.FLAGS
flags.DEFINE_string("results_dir", "docs/evidence/cifar10_d16",
                    "An evidence.py --output_dir.")
flags.DEFINE_float("margin", 1.0,
                   "Non-inferiority margin against dense, in points.")
flags.DEFINE_bool("recovery_trend", False,
                  "Instead of the table: the gap of --arm to --baseline in "
                  "--short and --long, two evidence folders that differ only "
                  "in the recovery after the last stage, and whether it "
                  "closes (issue 37's rule).")
flags.DEFINE_string("short", None,
                    "With --recovery_trend: the folder of the short recovery.")
flags.DEFINE_string("long", None,
                    "With --recovery_trend: the folder of the long recovery.")
flags.DEFINE_string("arm", "el1_layer@0.45",
                    "With --recovery_trend: the pruned arm.")
flags.DEFINE_string("baseline", "dense",
                    "With --recovery_trend: the arm it is compared with.")
flags.DEFINE_string("trend_json", None,
                    "With --recovery_trend: where its JSON goes (optional).")

TFSDN_KINDS = ("el1_global", "el1_layer", "el1_nested", "bn_gamma_global",
               "weight_l1_global")


load = results_io.load


def correct(results, labels, arm, seeds, split="test"):
  return np.stack([results_io.decode(results[arm][s][f"{split}_predictions"]) ==
                   labels[split] for s in seeds])


def compare(results, labels, a, b):
  """Paired comparison of arms a and b over their common seeds, or None."""
  if a not in results or b not in results:
    return None
  seeds = sorted(set(results[a]) & set(results[b]))
  if not seeds:
    return None
  ca, cb = correct(results, labels, a, seeds), correct(results, labels, b,
                                                        seeds)
  mean, low, high = paired.bootstrap_difference(ca, cb)
  tests = [paired.mcnemar(x, y) for x, y in zip(ca, cb)]  # one per seed
  # Branches of one trunk that record their machine and differ in it are
  # not bit-paired; an arm trained from scratch shares no trunk anyway.
  machines = [(results[a][s].get("machine"), results[b][s].get("machine"))
              for s in seeds]
  share_trunk = not any(results[x][seeds[0]]["kind"] in
                        arm_names.FROM_SCRATCH for x in (a, b))
  return {"a": a, "b": b, "seeds": seeds, "diff": 100 * mean,
          "machines_differ": share_trunk and any(
              x and y and x != y for x, y in machines),
          "low": 100 * low, "high": 100 * high, "mcnemar": tests,
          "macs": (np.mean([results[a][s]["macs_vs_dense"] for s in seeds]),
                   np.mean([results[b][s]["macs_vs_dense"] for s in seeds]))}


def summary_rows(results):
  rows = []
  for arm, by_seed in results.items():
    values = list(by_seed.values())
    test = 100 * np.array([r["test_accuracy"] for r in values])
    rows.append({
        "arm": arm, "seeds": len(values),
        "test": test.mean(), "test_sd": test.std(ddof=1) if len(test) > 1
        else float("nan"),
        "validation": 100 * np.mean([r["validation_accuracy"]
                                     for r in values]),
        "macs": np.mean([r["macs_vs_dense"] for r in values]),
        "params": np.mean([r["params"] for r in values]),
        "kind": values[0]["kind"], "keep": values[0]["keep"]})
  return sorted(rows, key=lambda r: (-r["macs"], r["arm"]))


def best_tfsdn(rows, keep):
  """The tfsdn arm at budget `keep` with the best mean validation accuracy."""
  candidates = [r for r in rows if r["kind"] in TFSDN_KINDS and
                abs(r["keep"] - keep) < 1e-9]
  return max(candidates, key=lambda r: r["validation"])["arm"] if (
      candidates) else None


def _fmt(c):
  if c is None:
    return "not run yet"
  tests = "; ".join(f"seed {s}: {a}:{b}, p={p:.3g}"
                    for s, (a, b, p) in zip(c["seeds"], c["mcnemar"]))
  warning = ("; WARNING: the arms ran on different machines, so they do "
             "not share a trunk bit for bit" if c.get("machines_differ")
             else "")
  return (f"{c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}] points at "
          f"{c['macs'][0]:.3f}x vs {c['macs'][1]:.3f}x MACs (McNemar, images "
          f"only A : only B right, {tests}){warning}")


def _within_margin(c):
  """Verdict of a non-inferiority claim: 95% lower bound above -margin."""
  if c is None:
    return "not run yet"
  return "holds" if c["low"] > -FLAGS.margin else "not shown"


def _above_zero(c):
  """Verdict of a superiority claim: 95% interval above 0."""
  if c is None:
    return "not run yet"
  return "holds" if c["low"] > 0 else "not shown"


def comparisons(results, labels, rows):
  """The comparisons the targets are about, with a verdict each."""
  lines, keeps = [], sorted({r["keep"] for r in rows if r["keep"] < 1})
  for keep in keeps:
    best = best_tfsdn(rows, keep)
    tag = f"@{keep:g}"
    if best is None:
      continue
    vs_dense = compare(results, labels, best, "dense")
    lines.append(f"- Best tfsdn arm at {keep:g}x MACs (chosen on validation): "
                 f"`{best}`.")
    if vs_dense:
      verdict = _within_margin(vs_dense)
      lines.append(
          f"  - non-inferiority to dense (95% lower bound above "
          f"-{FLAGS.margin:g} point): {verdict}; {best} - dense = "
          f"{_fmt(vs_dense)}")
    for other, claim in (
        (f"random_matched{tag}", "criterion beats random at the same "
         "per-layer counts"),
        (f"narrow_dense{tag}", "beats a dense net narrowed to the same MACs"),
        (f"retrained{tag}", "beats its stripped architecture retrained "
         "from scratch"),
        (f"retrained_layer{tag}", "beats its stripped architecture "
         "retrained from scratch"),
        (f"tfmot_unstructured{tag}", "beats tfmot's unstructured pruning "
         "of the same convolutions (zeros, no speed-up without sparse "
         "kernels)")):
      # random_matched has el1_global's counts; each retrained arm has the
      # architecture of the arm it needs.
      needs = arm_names.NEEDS.get(other.partition("@")[0])
      subject = f"{needs}{tag}" if needs else best
      c = compare(results, labels, subject, other)
      verdict = _above_zero(c)
      lines.append(f"  - {claim} (interval above 0): {verdict}; "
                   f"{subject} - {other} = {_fmt(c)}")
    c = compare(results, labels, f"el1_global{tag}", f"el1_layer{tag}")
    verdict = ("not run yet" if c is None else
               "holds" if c["diff"] >= 0 else "not shown")
    lines.append(f"  - global allocation at least as accurate as layer-wise "
                 f"(mean difference >= 0): {verdict}; el1_global{tag} - "
                 f"el1_layer{tag} = {_fmt(c)}")
    c = compare(results, labels, f"el1_nested{tag}", f"el1_layer{tag}")
    verdict = _within_margin(c)
    lines.append(f"  - nested selections (one prefix per producer and reader, "
                 f"for deployment speed) cost under {FLAGS.margin:g} point "
                 f"(95% lower bound above -{FLAGS.margin:g}): {verdict}; "
                 f"el1_nested{tag} - el1_layer{tag} = {_fmt(c)}")
    # Nested selections strand more filters, so at one budget they end at
    # fewer MACs: also compare the nested arm with the fewest MACs not
    # below el1_layer's.
    layer = next((r for r in rows if r["arm"] == f"el1_layer{tag}"), None)
    matched = min((r for r in rows if r["kind"] == "el1_nested" and layer
                   and r["macs"] >= layer["macs"]),
                  key=lambda r: r["macs"], default=None)
    if matched:
      c = compare(results, labels, matched["arm"], f"el1_layer{tag}")
      verdict = _within_margin(c)
      lines.append(f"  - the same at no fewer MACs (95% lower bound above "
                   f"-{FLAGS.margin:g}): {verdict}; {matched['arm']} - "
                   f"el1_layer{tag} = {_fmt(c)}")
    nested = next((r for r in rows if r["arm"] == f"el1_nested{tag}"), None)
    narrow = matched_narrow(rows, nested)
    if narrow:
      c = compare(results, labels, nested["arm"], narrow["arm"])
      verdict = _above_zero(c)
      lines.append(f"  - nested selections beat a dense net narrowed to "
                   f"their own MACs (interval above 0): {verdict}; "
                   f"{nested['arm']} - {narrow['arm']} = {_fmt(c)}")
  return lines


def matched_narrow(rows, row, tolerance=0.05):
  """The `narrow_dense` row nearest `row` in MACs, within `tolerance`.

  The narrowed net of a budget has other MACs than the pruned arms that
  end below it (nested selections strand filters): this finds the one run
  at their MACs, if any (`narrow_dense@KEEP` for KEEP near their ratio).
  """
  if row is None or not row["macs"] > 0:
    return None
  near = [r for r in rows if r["kind"] == "narrow_dense" and
          abs(r["macs"] / row["macs"] - 1) <= tolerance + 1e-9]
  return min(near, key=lambda r: abs(r["macs"] - row["macs"]), default=None)


def table_markdown(config, labels, results):
  rows = summary_rows(results)
  lines = [
      "| arm | seeds | test acc. (mean ± sd) | validation acc. | MACs vs "
      "dense | parameters |",
      "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    sd = "" if np.isnan(r["test_sd"]) else f" ± {r['test_sd']:.2f}"
    lines.append(f"| {r['arm']} | {r['seeds']} | {r['test']:.2f}%{sd} | "
                 f"{r['validation']:.2f}% | {r['macs']:.3f}x | "
                 f"{r['params']:,.0f} |")
  lines += [
      "", f"DenseNet-{config['depth']} (k={config['growth_rate']}), "
      f"{format(config['train_size'], ',') if config['train_size'] else 'all'}"
      " training images, "
      f"{len(labels['validation']):,} validation and {len(labels['test']):,} "
      f"test images; {config['epochs']} epochs, the first "
      f"{config['trunk_epochs']} shared (trunk), learning rate "
      f"{config['learning_rate']} / 10 at epochs {config['lr_drop_epochs']}; "
      f"{config['num_stages']} stages at branch epochs "
      f"{config['prune_begin_epoch']}..{config['prune_end_epoch']}. "
      "Differences in points with paired 95% bootstrap intervals (seeds and "
      "images resampled).", "", "Claims:", ""]
  lines += comparisons(results, labels, rows)
  noise = compare(results, labels, "el1_global@0.45", "random_matched@0.45")
  if noise:
    half = (noise["high"] - noise["low"]) / 2
    lines += ["", f"Planning (pilot): the el1_global - random_matched "
              f"interval is ±{half:.2f} points with {len(noise['seeds'])} "
              f"seed(s); if it shrinks as 1/sqrt(seeds), ±0.5 points needs "
              f"about {paired.seeds_needed(half, len(noise['seeds']), 0.5)} "
              "seeds."]
  return "\n".join(lines) + "\n", rows


def plot(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from tfsdn.files import atomic_path  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=(7, 4.6))
  for r in rows:
    sd = 0 if np.isnan(r["test_sd"]) else r["test_sd"]
    axes.errorbar(r["macs"], r["test"], yerr=sd, fmt="o", capsize=3)
    axes.annotate(r["arm"], (r["macs"], r["test"]), fontsize=7,
                  textcoords="offset points", xytext=(4, 3))
  axes.set_xlabel("MACs of the compact model / dense MACs")
  axes.set_ylabel("test accuracy (%), mean ± sd over seeds")
  axes.grid(alpha=0.3)
  figure.tight_layout()
  with atomic_path(path, suffix=".png") as tmp:
    figure.savefig(tmp, dpi=110)
  plt.close(figure)


def _points(interval):
  return [round(100 * v, 2) for v in interval]


def trend(short_dir, long_dir, arm, baseline, margin):
  """The gaps, Delta per seed and pooled, and the rule's verdicts."""
  folders = {}
  for name, folder in (("short", short_dir), ("long", long_dir)):
    _, labels, results = load(folder)
    for needed in (arm, baseline):
      if needed not in results:
        raise ValueError(f"{folder!r} has no results for arm {needed!r}")
    folders[name] = (labels, results)
  if not np.array_equal(folders["short"][0]["test"],
                        folders["long"][0]["test"]):
    raise ValueError(f"{short_dir!r} and {long_dir!r} test on other images")
  seeds = sorted(set.intersection(*[set(r[k]) for _, r in folders.values()
                                    for k in (arm, baseline)]))
  if not seeds:
    raise ValueError("No seed has both arms in both folders")
  gaps = {}
  for name, (labels, results) in folders.items():
    gaps[name] = (correct(results, labels, arm, seeds).astype(float) -
                  correct(results, labels, baseline, seeds))
  zeros = np.zeros_like(gaps["long"])
  report = {"arm": arm, "baseline": baseline, "seeds": seeds,
            "margin_points": margin, "per_seed": []}
  for i, seed in enumerate(seeds):
    row = {"seed": seed}
    for name in ("short", "long"):
      row[f"gap_{name}"] = _points(paired.bootstrap_difference(
          gaps[name][i:i + 1], zeros[i:i + 1]))
    row["delta"] = _points(paired.bootstrap_difference(
        gaps["long"][i:i + 1], gaps["short"][i:i + 1]))
    report["per_seed"].append(row)
  for name in ("short", "long"):
    report[f"gap_{name}"] = _points(
        paired.bootstrap_difference(gaps[name], zeros))
  report["delta"] = _points(paired.bootstrap_difference(gaps["long"],
                                                        gaps["short"]))
  report["gap_closes"] = bool(
      all(r["delta"][0] > 0 for r in report["per_seed"]) and
      report["delta"][1] > 0)
  report["non_inferior"] = bool(report["gap_long"][1] > -margin)
  return report


def _recovery_trend():
  """--recovery_trend: prints the trend as a table, writes --trend_json."""
  if not (FLAGS.short and FLAGS.long):
    raise app.UsageError("--recovery_trend needs --short and --long.")
  report = trend(FLAGS.short, FLAGS.long, FLAGS.arm, FLAGS.baseline,
                 FLAGS.margin)
  fmt = lambda p: f"{p[0]:+.2f} [{p[1]:+.2f}, {p[2]:+.2f}]"
  print(f"{report['arm']} - {report['baseline']}, points, 95% intervals")
  print("| seed | gap, short R | gap, long R | Delta |")
  print("| --- | ---: | ---: | ---: |")
  for r in report["per_seed"]:
    print(f"| {r['seed']} | {fmt(r['gap_short'])} | {fmt(r['gap_long'])} | "
          f"{fmt(r['delta'])} |")
  print(f"| pooled | {fmt(report['gap_short'])} | {fmt(report['gap_long'])} "
        f"| {fmt(report['delta'])} |")
  print(f"gap closes: {report['gap_closes']}; non-inferior at "
        f"-{report['margin_points']:g} point: {report['non_inferior']}")
  if FLAGS.trend_json:
    from tfsdn.files import atomic_path  # pylint: disable=g-import-not-at-top
    with atomic_path(FLAGS.trend_json, suffix=".json") as tmp:
      with open(tmp, "w") as f:
        json.dump(report, f, indent=2)


def main(argv):
  del argv
  from tfsdn.files import atomic_path  # pylint: disable=g-import-not-at-top
  if FLAGS.recovery_trend:
    _recovery_trend()
    return
  if FLAGS.short or FLAGS.long or FLAGS.trend_json:
    raise app.UsageError("--short, --long and --trend_json go with "
                         "--recovery_trend.")
  if not os.path.exists(os.path.join(FLAGS.results_dir, "config.json")):
    raise app.UsageError(f"--results_dir={FLAGS.results_dir!r} holds no "
                         "evidence.py results (config.json is missing).")
  config, labels, results = load(FLAGS.results_dir)
  if not results:
    raise app.UsageError(f"No results in {FLAGS.results_dir!r} yet.")
  table, rows = table_markdown(config, labels, results)
  with atomic_path(os.path.join(FLAGS.results_dir, "table.md"),
                   suffix=".md") as tmp:
    with open(tmp, "w") as f:
      f.write(table)
  plot(rows, os.path.join(FLAGS.results_dir, "accuracy_vs_macs.png"))
  print(table)


if __name__ == "__main__":
  app.run(main)
