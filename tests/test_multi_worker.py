"""examples/train_cifar.py on two MultiWorkerMirroredStrategy workers.

Two processes on 127.0.0.1 (ports chosen free by the test) train a tiny
DenseNet from TFRecords through two pruning stages. Marked `multi_worker`:
the README's test command runs it in a pytest invocation of its own, after
the parallel ones, since the two workers need both cores.
"""

import json
import os
import re
import socket
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests import helpers
from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_cifar.py")


def _args(records, model_dir, epochs):
  """train_cifar.py on two workers: a tiny DenseNet, two stages."""
  return [sys.executable, SCRIPT, f"--dataset=tfrecord:{records}",
          f"--model_dir={model_dir}",
          "--distribution_strategy=multi_worker_mirrored", "--depth=10",
          "--growth_rate=4", f"--epochs={epochs}", "--batch_size=16",
          "--train_size=48", "--eval_size=16", "--num_stages=2",
          "--prune_begin_epoch=0", "--prune_end_epoch=1"]


def _start_workers(args, log_dir):
  """Starts one process per worker with its TF_CONFIG and a TMPDIR of its
  own (`log_dir`/tmp<index>); returns them."""
  workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
  processes = []
  for index in range(2):
    tmp = log_dir / f"tmp{index}"
    tmp.mkdir(exist_ok=True)
    env = helpers.script_env(TMPDIR=str(tmp), TF_CONFIG=json.dumps({
        "cluster": {"worker": workers},
        "task": {"type": "worker", "index": index}}))
    with open(log_dir / f"worker{index}.log", "w") as log:  # Popen dups it.
      processes.append(subprocess.Popen(args, env=env, cwd=ROOT, stdout=log,
                                        stderr=subprocess.STDOUT, text=True))
  return processes


def _wait(processes, log_dir):
  logs = []
  for index, process in enumerate(processes):
    process.wait(timeout=600)
    logs.append((log_dir / f"worker{index}.log").read_text())
    assert process.returncode == 0, logs[-1][-4000:]
  return logs


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.mark.multi_worker
def test_two_workers_prune_alike_and_only_the_chief_writes(tmp_path):
  records = write_tfrecords(tmp_path / "cifar", count=48)
  model_dir = tmp_path / "run"
  args = _args(records, model_dir, epochs=2)
  logs = _wait(_start_workers(args, tmp_path), tmp_path)
  digests = [re.findall(r"Live input channels digest: (\w+)", log)
             for log in logs]
  assert len(digests[0]) == 1 and digests[0] == digests[1], digests
  for log in logs:  # Both stages ran and were exact on each worker.
    assert len(re.findall(r"Pruning stage at step \d+", log)) == 2
  assert "Not the chief: wrote nothing" in logs[1]
  results = json.loads((model_dir / "results.json").read_text())
  assert results["replicas"] == 2
  assert results["mean_sparsity"] == 0.5
  served = tf.saved_model.load(results["export_path"]).signatures[
      "serving_default"](images=tf.zeros([2, 32, 32, 3]))
  assert served["probabilities"].shape == (2, 10)
  # The chief's files only: nothing of worker 1 in the run directory.
  names = sorted(os.listdir(model_dir))
  assert names == ["compact_model.keras", "connectivity.png", "export",
                   "final_model.keras", "flags.json", "logs", "report.md",
                   "results.json"], names
  assert not [p for p in model_dir.rglob("*") if "worker" in p.name]
  # Nor left in worker 1's temporary folder (its summary writers once wrote
  # it again at exit, after cleanup).
  assert not list((tmp_path / "tmp1").glob("tfsdn-*"))


@pytest.mark.multi_worker
def test_killed_workers_restarted_with_the_same_flags_resume(tmp_path):
  records = write_tfrecords(tmp_path / "cifar", count=48)
  model_dir = tmp_path / "run"
  args = _args(records, model_dir, epochs=3)
  processes = _start_workers(args, tmp_path)
  # Kill both once the chief's backup of epoch 1 exists (during epoch 2).
  deadline = time.time() + 300
  backup = model_dir / "backup"
  while time.time() < deadline and all(p.poll() is None for p in processes):
    if backup.exists() and any(p.name == "checkpoint"
                               for p in backup.rglob("*")):
      break
    time.sleep(0.2)
  assert all(p.poll() is None for p in processes), (
      tmp_path / "worker0.log").read_text()[-3000:]
  for process in processes:
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert not (model_dir / "results.json").exists()
  logs = _wait(_start_workers(args, tmp_path), tmp_path)
  for log in logs:
    assert "Epoch 1/3" not in log, log[-3000:]  # resumed, not restarted
  digests = [re.findall(r"Live input channels digest: (\w+)", log)
             for log in logs]
  assert len(digests[0]) == 1 and digests[0] == digests[1]
  results = json.loads((model_dir / "results.json").read_text())
  assert results["mean_sparsity"] == 0.5
