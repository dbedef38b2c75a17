"""benchmarks/evidence.py, evidence_table.py and paired.py on tiny data."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)
import paired  # pylint: disable=g-import-not-at-top,wrong-import-position

ARMS = ("dense,el1_global@0.6,random_matched@0.6,el1_layer@0.6,"
        "narrow_dense@0.6,retrained@0.6,retrained_layer@0.6,"
        "tfmot_unstructured@0.6,el1_nested@0.6")


def _run(script, check=True, **flags):
  return subprocess.run(
      [sys.executable, os.path.join(BENCHMARKS, script)] +
      [f"--{k}={v}" for k, v in flags.items()],
      capture_output=True, text=True, cwd=ROOT, timeout=900, check=check,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def _evidence(records, output_dir, check=True, **overrides):
  flags = dict(dataset=f"tfrecord:{records}", output_dir=str(output_dir),
               work_dir=str(output_dir) + "_work", depth=7, growth_rate=4,
               epochs=3, trunk_epochs=1, lr_drop_epochs=2, batch_size=8,
               train_size=24, validation_size=8, test_size=16, arms=ARMS)
  flags.update(overrides)
  return _run("evidence.py", check=check, **flags)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return write_tfrecords(tmp_path_factory.mktemp("cifar"), count=32)


@pytest.fixture(scope="module")
def first_run(records, tmp_path_factory):
  output_dir = tmp_path_factory.mktemp("evidence") / "out"
  _evidence(records, output_dir)
  return output_dir


def _result(output_dir, arm, seed=0):
  return json.loads((output_dir / f"seed{seed}" / f"{arm}.json").read_text())


def test_every_arm_prunes_what_it_says(first_run):
  dense = _result(first_run, "dense")
  assert dense["macs_vs_dense"] == 1.0
  assert dense["test_examples"] == 16 and dense["validation_examples"] == 8
  glob = _result(first_run, "el1_global@0.6")
  assert glob["macs_vs_dense"] <= 0.6
  assert [s["step"] for s in glob["stages"]] == [2, 4]
  # random_matched pruned exactly el1_global's counts, stage by stage.
  matched = _result(first_run, "random_matched@0.6")
  assert matched["stages"] == glob["stages"]
  assert matched["layer_sparsity"] == glob["layer_sparsity"]
  assert matched["test_predictions"] != glob["test_predictions"] or (
      matched["weights_sha256"] != glob["weights_sha256"])
  layer = _result(first_run, "el1_layer@0.6")
  fractions = list(layer["layer_sparsity"].values())  # one, up to rounding
  assert max(fractions) - min(fractions) < 0.05
  # retrained: el1_global's compact architecture, trained from scratch.
  retrained = _result(first_run, "retrained@0.6")
  assert retrained["params"] == glob["params"]
  assert retrained["macs"] == glob["macs"]
  assert retrained["weights_sha256"] != glob["weights_sha256"]
  # retrained_layer: el1_layer's architecture instead.
  retrained_layer = _result(first_run, "retrained_layer@0.6")
  assert retrained_layer["params"] == layer["params"]
  assert retrained_layer["macs"] == layer["macs"]
  assert retrained_layer["weights_sha256"] != layer["weights_sha256"]
  # el1_nested: el1_layer's schedule and counts, nested selections.
  nested = _result(first_run, "el1_nested@0.6")
  assert nested["stages"] == layer["stages"]
  assert nested["layer_sparsity"] == layer["layer_sparsity"]
  assert nested["weights_sha256"] != layer["weights_sha256"]
  narrow = _result(first_run, "narrow_dense@0.6")
  assert narrow["growth_rate"] < 4 and narrow["macs_vs_dense"] <= 0.6
  tfmot = _result(first_run, "tfmot_unstructured@0.6")
  assert tfmot["macs"] < tfmot["macs_computed"]
  # The compact models are stock tf_keras models that reproduce the result.
  import tf_keras  # pylint: disable=g-import-not-at-top
  model = tf_keras.models.load_model(
      str(first_run / "seed0" / "el1_global@0.6.keras"))
  assert not any("Prunable" in type(l).__name__ for l in model.layers)
  assert not os.path.exists(first_run / "seed0" / "dense.pruned.keras")
  assert not os.path.exists(first_run / "seed0" / "narrow_dense@0.6.pruned.keras")


def test_a_pruned_arm_keeps_its_model_before_the_strip(first_run):
  import hashlib  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  import tfsdn  # pylint: disable=g-import-not-at-top
  for arm in ("el1_layer@0.6", "el1_nested@0.6"):
    result = _result(first_run, arm)
    assert result["pruned_model_path"].endswith(f"{arm}.pruned.keras")
    pruned = tf_keras.models.load_model(
        str(first_run / "seed0" / f"{arm}.pruned.keras"))
    layers = tfsdn.prunable_layers(pruned)
    assert {l.name: l.sparsity() for l in layers} == result["layer_sparsity"]
    # Stripped as the runner did, it is the committed compact model.
    compact = tfsdn.strip(pruned, slice_cost_macs=0, pool_first=False).model
    assert hashlib.sha256(b"".join(
        w.tobytes() for w in compact.get_weights())).hexdigest() == (
            result["weights_sha256"])


def test_a_rerun_reproduces_an_arm_bit_for_bit(records, first_run, tmp_path):
  _evidence(records, tmp_path / "again", arms="dense,el1_global@0.6")
  for arm in ("dense", "el1_global@0.6"):
    a, b = _result(first_run, arm), _result(tmp_path / "again", arm)
    for key in ("weights_sha256", "test_predictions", "train_loss",
                "validation_predictions"):
      assert a[key] == b[key], (arm, key)


def test_restart_skips_and_other_flags_are_refused(records, first_run):
  before = (first_run / "seed0" / "dense.json").stat().st_mtime_ns
  result = _evidence(records, first_run, arms="dense")
  assert "dense, seed 0: done" in result.stderr
  assert (first_run / "seed0" / "dense.json").stat().st_mtime_ns == before
  result = _evidence(records, first_run, check=False, arms="dense",
                     learning_rate=0.05)
  assert result.returncode != 0
  assert "holds results made with other flags" in result.stderr
  result = _evidence(records, first_run, check=False, arms="el1_global@1.5")
  assert "KEEP in (0, 1)" in result.stderr.strip().splitlines()[-1]


def test_table_pairs_arms_and_states_each_claim(first_run):
  result = _run("evidence_table.py", results_dir=str(first_run))
  table = (first_run / "table.md").read_text()
  assert table in result.stdout
  assert (first_run / "accuracy_vs_macs.png").exists()
  for claim in ("non-inferiority to dense", "criterion beats random",
                "narrowed to the same MACs", "retrained from scratch",
                "global allocation at least as accurate"):
    assert claim in table
  assert "| el1_global@0.6 | 1 |" in table
  # Each retrained arm is compared with the arm whose architecture it has.
  assert "el1_global@0.6 - retrained@0.6 = " in table
  assert "el1_layer@0.6 - retrained_layer@0.6 = " in table
  # tfmot_unstructured is compared with the arm chosen on validation.
  assert " - tfmot_unstructured@0.6 = " in table
  assert "el1_nested@0.6 - el1_layer@0.6 = " in table
  assert "different machines" not in table


def test_table_warns_when_paired_arms_ran_on_different_machines(
    first_run, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(first_run, copy)
  for arm in ("dense", "narrow_dense@0.6"):
    path = copy / "seed0" / f"{arm}.json"
    result = json.loads(path.read_text())
    assert result["machine"]["cpu"] and result["machine"]["cpus"] >= 1
    result["machine"] = dict(result["machine"], cpu="another CPU")
    path.write_text(json.dumps(result))
  _run("evidence_table.py", results_dir=str(copy))
  table = (copy / "table.md").read_text()
  line = next(l for l in table.splitlines()
              if "el1_global@0.6 - random_matched@0.6" in l)
  assert "different machines" not in line
  line = next(l for l in table.splitlines() if " - dense = " in l)
  assert "WARNING: the arms ran on different machines" in line
  # An arm trained from scratch shares no trunk: nothing to warn about.
  line = next(l for l in table.splitlines() if " - narrow_dense@0.6 = " in l)
  assert "different machines" not in line


def test_nested_selections_meet_the_narrowed_net_of_their_own_macs(
    first_run, tmp_path):
  # A narrow_dense arm at el1_nested's MACs (within 5%) is compared with
  # it; one further off is not.
  copy = tmp_path / "copy"
  shutil.copytree(first_run, copy)
  nested = _result(copy, "el1_nested@0.6")
  for keep, ratio in ((0.41, 1.04), (0.43, 1.07)):
    narrow = dict(_result(copy, "narrow_dense@0.6"), keep=keep,
                  arm=f"narrow_dense@{keep}",
                  macs_vs_dense=nested["macs_vs_dense"] * ratio)
    (copy / "seed0" / f"narrow_dense@{keep}.json").write_text(
        json.dumps(narrow))
  _run("evidence_table.py", results_dir=str(copy))
  table = (copy / "table.md").read_text()
  assert "narrowed to their own MACs" in table
  assert "el1_nested@0.6 - narrow_dense@0.41 = " in table
  assert "- narrow_dense@0.43 = " not in table


def test_mcnemar_is_exact():
  a = np.array([1, 1, 1, 0, 0, 1], bool)
  b = np.array([0, 0, 0, 0, 1, 1], bool)
  only_a, only_b, p = paired.mcnemar(a, b)
  assert (only_a, only_b) == (3, 1)
  assert p == pytest.approx(2 * (1 + 4) / 16)  # 2 * P(X <= 1), X~B(4, 1/2)
  assert paired.mcnemar(a, a)[2] == 1.0
  # Thousands of discordant images (10,000 test images): no overflow.
  many = np.zeros(10_000, bool)
  many[:5_400] = True
  only_a, only_b, p = paired.mcnemar(many, ~many)
  assert (only_a, only_b) == (5_400, 4_600) and 0 < p < 1e-12
  with pytest.raises(ValueError, match="one entry per image"):
    paired.mcnemar(a, b[:3])


def test_bootstrap_interval_covers_the_difference_and_shrinks():
  rng = np.random.default_rng(0)
  a = rng.random((3, 2000)) < 0.7
  b = rng.random((3, 2000)) < 0.6
  mean, low, high = paired.bootstrap_difference(a, b, resamples=500)
  assert low < mean < high
  assert low < 0.1 < high
  _, low1, high1 = paired.bootstrap_difference(a[:1], b[:1], resamples=500)
  assert high1 - low1 > 0
  with pytest.raises(ValueError, match="seeds, images"):
    paired.bootstrap_difference(a[0], b[0])
  with pytest.raises(ValueError, match="resamples=0"):
    paired.bootstrap_difference(a, b, resamples=0)
  with pytest.raises(ValueError, match="level=1.5"):
    paired.bootstrap_difference(a, b, level=1.5)
  assert paired.seeds_needed(1.0, 2, 0.5) == 8
  with pytest.raises(ValueError, match="half_width_now=nan"):
    paired.seeds_needed(float("nan"), 2, 0.5)


def test_recovery_trend_applies_the_rule_to_the_committed_runs():
  import evidence_table  # pylint: disable=g-import-not-at-top
  folder = os.path.join(os.path.dirname(BENCHMARKS), "docs", "evidence",
                        "cifar10_d16_recovery")
  report = evidence_table.trend(os.path.join(folder, "r3"),
                                os.path.join(folder, "r12"),
                                "el1_layer@0.45", "dense", 1.0)
  assert report["seeds"] == [0, 1, 2]
  # Per seed, Delta is exactly the difference of the two gaps.
  for row in report["per_seed"]:
    assert row["delta"][0] == pytest.approx(
        row["gap_long"][0] - row["gap_short"][0], abs=0.011)
  assert report["gap_closes"] == (
      all(r["delta"][0] > 0 for r in report["per_seed"]) and
      report["delta"][1] > 0)
  assert report["non_inferior"] == (report["gap_long"][1] > -1.0)
  with pytest.raises(ValueError, match="no results for arm 'kd_dense'"):
    evidence_table.trend(os.path.join(folder, "r3"),
                         os.path.join(folder, "r12"), "kd_dense", "dense", 1.0)


def test_accuracy_latency_times_what_a_user_deploys(first_run, tmp_path):
  output = tmp_path / "latency.json"
  done = _run("accuracy_latency.py", results_dir=str(first_run),
              arms="dense,el1_layer@0.6,narrow_dense@0.6", runtimes="tf",
              batch_sizes="1,2", rounds=1, seconds=0.05,
              output=str(output), plot=str(tmp_path / "latency.png"))
  out = json.loads(output.read_text())
  for b in ("1", "2"):
    summary = out["runtimes"]["tf"][b]
    assert set(summary["means"]) == {"dense", "el1_layer@0.6",
                                     "narrow_dense@0.6"}
    (dense,) = summary["points"]["dense"]
    assert dense["speed_vs_dense"] == 1.0
    # Rebuilt all-live from their compact models and stripped for the
    # target, as the pruned arm is.
    assert dense["stripped_for_target"]
    assert summary["points"]["narrow_dense@0.6"][0]["stripped_for_target"]
    layer = summary["points"]["el1_layer@0.6"][0]
    assert layer["test_accuracy"] == _result(first_run, "el1_layer@0.6")[
        "test_accuracy"]
    assert layer["largest_logit_difference"] < 1e-3
    assert summary["front"]  # the fastest, the most accurate, or both
  assert "| tf | 1 | dense | 1.00x" in done.stdout
  assert (tmp_path / "latency.png").stat().st_size > 0


def test_accuracy_latency_refuses_bad_flags(first_run, tmp_path):
  # Each case is a fresh process (TensorFlow's import): three that reach
  # the checks of the three kinds (a value, an arm missing, a seed not
  # run); Paused's own checks are tested in test_deploy_speed.py.
  for flags, named in ((dict(runtimes="tf,trt"), "'trt'"),
                       (dict(arms="el1_layer@0.6"), "'dense'"),
                       (dict(seeds="7"), "'7'")):
    done = _run("accuracy_latency.py", check=False,
                results_dir=str(first_run), output=str(tmp_path / "x.json"),
                **flags)
    assert done.returncode != 0 and named in done.stderr, (flags, done.stderr)
  assert not (tmp_path / "x.json").exists()


def test_the_front_keeps_what_nothing_beats():
  sys.path.insert(0, BENCHMARKS)
  import accuracy_latency  # pylint: disable=g-import-not-at-top
  points = {"a": (1.0, 0.60), "b": (2.0, 0.70), "c": (2.0, 0.65),
            "d": (0.5, 0.55), "e": (1.0, 0.60)}
  # c is beaten by b (as fast, more accurate); a and e tie, neither beats
  # the other.
  assert accuracy_latency.front(points) == ["a", "b", "d", "e"]
