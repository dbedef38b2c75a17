"""examples/train_cifar_keras3.py end to end on tiny data, and its flags."""

import json
import os
import subprocess
import sys

import pytest

from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_cifar_keras3.py")


def _run(args, backend="tensorflow"):
  return subprocess.run(
      [sys.executable, SCRIPT] + args, capture_output=True, text=True,
      timeout=900, check=False,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "KERAS_BACKEND": backend})


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_trains_prunes_strips_and_exports(tmp_path, backend):
  pytest.importorskip(backend)
  write_tfrecords(tmp_path, count=48)
  run_dir = tmp_path / "run"
  result = _run([f"--backend={backend}", f"--dataset=tfrecord:{tmp_path}",
                 f"--model_dir={run_dir}", "--depth=10", "--growth_rate=4",
                 "--epochs=2", "--batch_size=8", "--validation_size=8",
                 "--num_stages=2", "--prune_begin_epoch=0",
                 "--prune_end_epoch=1", "--mac_budget=0.5",
                 "--export=tf_saved_model"])
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((run_dir / "results.json").read_text())
  assert results["backend"] == backend
  assert results["mac_ratio"] <= 0.5
  assert [s["step"] for s in results["stages"]] == [2, 6]  # epoch_step
  assert results["test_strip_max_logit_difference"] < 1e-3
  assert results["test_accuracy"] == results["test_accuracy_before_strip"]
  assert (run_dir / "compact_model.keras").exists()
  assert (run_dir / "final_model.keras").exists()
  assert "| MACs per image |" in (run_dir / "report.md").read_text()
  assert (run_dir / "connectivity.png").exists()
  # Where examples/train_cifar.py writes it, and said as it says it.
  assert (run_dir / "export" / "1" / "saved_model.pb").exists()
  assert f"--saved_model={run_dir / 'export' / '1'}" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--dataset=cifar10"], "--dataset must be tfrecord:DIR"),
    (["--dataset=tfrecord:/nonexistent"], "no train.tfrecord"),
    (["--mac_budget=1.5"], "--mac_budget must be in"),
    (["--export=pb"], "unknown formats"),
])
def test_bad_flags_end_in_one_line(tmp_path, args, message):
  write_tfrecords(tmp_path, count=2)
  base = [f"--dataset=tfrecord:{tmp_path}", f"--model_dir={tmp_path}/r"]
  result = _run(base + args)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("train_cifar_keras3.py: error:") and message in last
