"""End-to-end runs of examples/train_cifar.py on a tiny TFRecord set."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import helpers
from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_cifar.py")


def _args(data_dir, model_dir, **overrides):
  flags = dict(dataset=f"tfrecord:{data_dir}", model_dir=str(model_dir),
               depth=10, growth_rate=4, epochs=3, batch_size=8,
               train_size=32, eval_size=16, num_stages=2,
               prune_begin_epoch=0, prune_end_epoch=1)
  flags.update(overrides)
  return [sys.executable, SCRIPT] + [f"--{k}={v}" for k, v in flags.items()]


def _env():
  return helpers.script_env()


def _run(args, check=True):
  return subprocess.run(args, capture_output=True, text=True, env=_env(),
                        check=check, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return write_tfrecords(tmp_path_factory.mktemp("cifar"), count=40)


def test_kill_mid_training_resumes_and_keeps_pruned_channels(records, tmp_path):
  model_dir = tmp_path / "run"
  process = subprocess.Popen(_args(records, model_dir), env=_env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  # Kill the run once the backup of epoch 1 exists (during epoch 2).
  backup = model_dir / "backup"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if backup.exists() and any(p.name == "checkpoint"
                               for p in backup.rglob("*")):
      break
    time.sleep(0.2)
  assert process.poll() is None, process.stderr.read()[-3000:]
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (model_dir / "results.json").exists()

  resumed = _run(_args(records, model_dir))
  log = resumed.stderr
  assert "Resuming the run" in log
  assert "Epoch 1/3" not in resumed.stdout  # did not restart from epoch 0
  results = json.loads((model_dir / "results.json").read_text())
  assert results["mean_sparsity"] == 0.5  # every layer exactly: C is even
  assert results["export_test_accuracy"] == pytest.approx(
      results["test_accuracy"], abs=1e-6)
  assert results["params_after"] < results["params_before"]
  for name in ["flags.json", "report.md", "connectivity.png",
               "compact_model.keras", "final_model.keras", "logs"]:
    assert (model_dir / name).exists(), name
  assert os.listdir(model_dir / "export") == ["1"]

  # A finished run is never overwritten.
  again = _run(_args(records, model_dir), check=False)
  assert again.returncode != 0 and "finished run" in again.stderr


@pytest.mark.parametrize("overrides, message", [
    (dict(dataset="mnist"), "dataset='mnist'"),
    (dict(final_sparsity=1.0), "--final_sparsity must be in [0, 1)"),
    (dict(prune_end_epoch=3), "--prune_end_epoch=3 is past the last epoch"),
    (dict(mac_budget=1.0), "--mac_budget must be in (0, 1)"),
    (dict(mac_budget=0.5, final_sparsity=0.3), "exclude each other"),
])
def test_bad_flags_fail_before_training(records, tmp_path, overrides, message):
  result = _run(_args(records, tmp_path / "run", **overrides), check=False)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]  # One line, no flag help.
  assert last.startswith("train_cifar.py: error: ") and message in last
  assert "Traceback" not in result.stderr
  assert "Epoch 1/" not in result.stdout


def test_global_allocation_to_a_mac_budget(records, tmp_path):
  model_dir = tmp_path / "run"
  result = _run(_args(records, model_dir, epochs=2, num_stages=1,
                      prune_end_epoch=0, mac_budget=0.6))
  assert "Global allocation for the stage" in result.stderr
  assert "--mac_budget=0.6 bounds the estimate" in result.stdout
  results = json.loads((model_dir / "results.json").read_text())
  assert results["macs_after"] <= 0.6 * results["macs_before"]
  assert results["export_test_accuracy"] == pytest.approx(
      results["test_accuracy"], abs=1e-6)


def test_missing_data_and_changed_flags_fail_fast(records, tmp_path):
  result = _run(_args(tmp_path / "nowhere", tmp_path / "a"), check=False)
  assert result.returncode != 0 and "does not exist" in result.stderr
  model_dir = tmp_path / "b"
  model_dir.mkdir()
  (model_dir / "flags.json").write_text(json.dumps({"depth": 40}))
  result = _run(_args(records, model_dir), check=False)
  assert result.returncode != 0 and "different flags" in result.stderr
  assert json.loads((model_dir / "flags.json").read_text()) == {"depth": 40}


def test_late_failure_reruns_without_training_then_export_and_predict(
    records, tmp_path):
  model_dir = tmp_path / "run"
  args = dict(epochs=1, prune_end_epoch=0, num_stages=1)
  blocker = tmp_path / "not_a_directory"
  blocker.write_text("")  # The export fails after training finished.
  failed = _run(_args(records, model_dir, export_dir=blocker, **args),
                check=False)
  assert failed.returncode != 0 and "val_loss" in failed.stdout  # trained
  assert "not_a_directory" in failed.stderr
  assert not (model_dir / "results.json").exists()
  rerun = _run(_args(records, model_dir, **args))
  assert "val_loss" not in rerun.stdout  # restored, not trained again
  assert f"Written into {model_dir}:" in rerun.stdout  # says where
  assert f"SavedModel: {model_dir / 'export' / '1'}" in rerun.stdout
  results = json.loads((model_dir / "results.json").read_text())
  assert results["mean_sparsity"] == 0.5
  assert not (model_dir / "backup").exists()
  # No --dataset: a run directory's own data set (its flags.json) verifies.
  export = [sys.executable, os.path.join(ROOT, "examples", "export_model.py"),
            f"--model={model_dir}", f"--export_dir={tmp_path / 'sdn'}",
            "--verify_images=8"]
  # TF_CPP_MIN_LOG_LEVEL unset, as a user runs it: the script keeps
  # TensorFlow's noise down by itself.
  exported = subprocess.run(
      export + ["--xla", f"--tflite_path={tmp_path / 'sdn.tflite'}"],
      capture_output=True, text=True, cwd=ROOT, timeout=600, check=True,
      env=helpers.script_env(TF_CPP_MIN_LOG_LEVEL=None))
  assert "Exported and verified" in exported.stdout
  assert "Total parameters" in exported.stdout
  assert (tmp_path / "sdn.tflite").exists()
  for noise in ["cuInit", "untraced functions", "Sharding callback",
                "Skipping variable loading for optimizer"]:
    assert noise not in exported.stderr, noise
  refused = _run(export + ["--version=1"], check=False)
  assert refused.returncode == 1 and "pass --overwrite" in refused.stderr
  assert "Total parameters" not in refused.stdout  # refused before loading
  # Stripped for LiteRT at batch 1 (merged ranges with zero kernel rows,
  # transitions pooling first, reused and bounded concatenations, unfused
  # batch norm), reading through splits, given explicitly: still exported
  # and verified against the model.
  replaced = _run(export + ["--version=1", "--overwrite", "--target=litert@1",
                            "--channel_reads=split"])
  assert f"Exported and verified: {tmp_path / 'sdn' / '1'}" in replaced.stdout
  predicted = _run([sys.executable, os.path.join(ROOT, "examples",
                                                 "predict.py"),
                    f"--saved_model={tmp_path / 'sdn'}",
                    f"--tfrecord={records / 'test.tfrecord'}",
                    "--num_records=3", f"--request_json={tmp_path / 'r.json'}"])
  lines = [l for l in predicted.stdout.splitlines() if "#" in l]
  assert len(lines) == 3 and "(label 0, airplane)" in lines[0]
  body = json.loads((tmp_path / "r.json").read_text())
  assert body["signature_name"] == "serving_default"
  assert np.asarray(body["instances"]).shape == (3, 32, 32, 3)
