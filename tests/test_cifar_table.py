"""benchmarks/cifar_table.py end to end on a tiny TFRecord set."""

import json
import os
import subprocess
import sys

import pytest

from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "cifar_table.py")


def _run(records, output_dir, check=True, **overrides):
  flags = dict(dataset=f"tfrecord:{records}", output_dir=str(output_dir),
               arms="dense,random,tfmot_unstructured", depth=7, growth_rate=4,
               epochs=2, batch_size=8, train_size=24, validation_size=8,
               test_size=16, num_stages=1, speed_rounds=1, speed_seconds=0.1,
               speed_batch_size=8)
  flags.update(overrides)
  return subprocess.run(
      [sys.executable, SCRIPT] + [f"--{k}={v}" for k, v in flags.items()],
      capture_output=True, text=True, cwd=ROOT, timeout=600, check=check,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return write_tfrecords(tmp_path_factory.mktemp("cifar"), count=32)


def test_arms_table_plot_restart_and_changed_flags(records, tmp_path):
  output_dir = tmp_path / "table"
  _run(records, output_dir)
  results = {arm: json.loads((output_dir / f"{arm}.json").read_text())
             for arm in ("dense", "random", "tfmot_unstructured")}
  dense, random, tfmot = (results["dense"], results["random"],
                          results["tfmot_unstructured"])
  for result in results.values():
    assert result["train_examples"] == 24
    assert result["validation_examples"] == 8
    assert result["test_examples"] == 16
    assert result["export_test_accuracy"] == pytest.approx(
        result["test_accuracy"], abs=1e-6)
    assert set(result["throughput"]["images_per_second"]) == {"plain", "xla"}
  assert dense["throughput"]["vs_dense"] == pytest.approx(1.0)
  assert random["mean_sparsity"] == pytest.approx(0.5, abs=0.05)
  # Structured pruning removes parameters; unstructured keeps them stored.
  assert random["params_stored"] < dense["params_stored"]
  assert tfmot["params_stored"] == dense["params_stored"]
  assert tfmot["params"] < dense["params"]
  assert tfmot["macs_computed"] == dense["macs_computed"]
  table = (output_dir / "table.md").read_text()
  for arm in results:
    assert f"| {arm} |" in table
  assert "16 test images" in table
  assert (output_dir / "accuracy_vs_macs.png").stat().st_size > 0

  # A restart skips finished arms; a run with other training flags is refused.
  again = _run(records, output_dir, arms="dense")
  assert "Arm dense is done" in again.stderr
  assert "Epoch 1/" not in again.stdout
  changed = _run(records, output_dir, check=False, epochs=3)
  assert changed.returncode != 0
  assert "'epochs': (2, 3)" in changed.stderr


def test_bad_flags_fail_before_training(records, tmp_path):
  result = _run(records, tmp_path / "t", check=False, arms="dense,pruned")
  assert result.returncode != 0 and "'dense,pruned'" in result.stderr
  result = _run(records, tmp_path / "t", check=False, score_momentum=1.0)
  assert result.returncode != 0
  assert "--score_momentum must be in [0, 1). Received: 1.0" in result.stderr
  assert not (tmp_path / "t").exists()


def test_criteria_one_shot_compares_every_criterion(records, tmp_path):
  output_dir = tmp_path / "one_shot"
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "criteria_one_shot.py"),
       f"--dataset=tfrecord:{records}", f"--output_dir={output_dir}",
       "--depth=7", "--growth_rate=4", "--epochs=1", "--batch_size=8",
       "--train_size=16", "--validation_size=8", "--test_size=8",
       "--sparsities=0.25,0.5", "--random_repeats=2",
       "--recalibration_batches=1", "--stats_batches=1"],
      capture_output=True, text=True, cwd=ROOT, timeout=600, check=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  results = json.loads((output_dir / "one_shot.json").read_text())
  assert set(results["criteria"]) == {"expected_l1", "centered_l1",
                                      "weight_l1", "bn_gamma", "random"}
  for rows in results["criteria"].values():
    assert set(rows) == {"0.25", "0.5"}
  draws = results["criteria"]["random"]["0.5"]["validation_accuracy_draws"]
  assert len(draws) == 2
  assert "| bn_gamma |" in result.stdout
  assert (output_dir / "dense.weights.h5").exists()
