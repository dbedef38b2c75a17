r"""Does the gap to dense close with recovery? Issue 37's rule, applied.

Reads two evidence folders that differ only in the recovery after the last
stage (R epochs) and prints, per seed and pooled, the gap
`arm - dense` at each R and Delta = gap(long) - gap(short), paired per test
image (both folders test on the same images), with two-level bootstrap
intervals (`paired.py`). The rule, fixed before the runs (README,
"Evidence"): the gap closes if Delta > 0 in every seed and the pooled 95%
interval is above 0; non-inferior if the long run's gap has its lower bound
above -1 point. Writes the figures as JSON.

  python benchmarks/recovery_trend.py \
      --short=docs/evidence/cifar10_d16_recovery/r3 \
      --long=docs/evidence/cifar10_d16_recovery/r12 \
      --trend_json=docs/evidence/cifar10_d16_recovery/trend.json
"""

import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evidence_table  # pylint: disable=g-import-not-at-top,wrong-import-position
import paired  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("short", None, "Evidence folder of the short recovery.")
flags.DEFINE_string("long", None, "Evidence folder of the long recovery.")
flags.DEFINE_string("arm", "el1_layer@0.45", "The pruned arm.")  # --margin: evidence_table.py
flags.DEFINE_string("baseline", "dense", "The arm it is compared with.")
flags.DEFINE_string("trend_json", None, "Where the JSON goes (optional).")
flags.mark_flags_as_required(["short", "long"])


def _points(interval):
  return [round(100 * v, 2) for v in interval]


def trend(short_dir, long_dir, arm, baseline, margin):
  """The gaps, Delta per seed and pooled, and the rule's verdicts."""
  folders = {}
  for name, folder in (("short", short_dir), ("long", long_dir)):
    _, labels, results = evidence_table.load(folder)
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
    gaps[name] = (
        evidence_table.correct(results, labels, arm, seeds).astype(float) -
        evidence_table.correct(results, labels, baseline, seeds))
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


def main(argv):
  del argv
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
    temporary = FLAGS.trend_json + ".tmp"
    with open(temporary, "w") as f:
      json.dump(report, f, indent=2)
    os.replace(temporary, FLAGS.trend_json)


if __name__ == "__main__":
  app.run(main)
