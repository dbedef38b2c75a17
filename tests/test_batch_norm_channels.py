import importlib
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "batch_norm_channels.py")


def test_times_fused_and_unfused_blocks(tmp_path):
  output = tmp_path / "bn.json"
  run = subprocess.run(
      [sys.executable, SCRIPT, "--blocks=4:4,5:3", "--layers=3", "--size=8",
       "--rounds=1", "--seconds=0.02", f"--output={output}"],
      capture_output=True, text=True, cwd=ROOT, timeout=300, check=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get(
                   "PYTHONPATH", "")])))
  results = json.loads(output.read_text())
  assert set(results["ms_per_call"]) == {"4:4/fused", "4:4/unfused",
                                         "5:3/fused", "5:3/unfused"}
  assert all(ms > 0 for ms in results["ms_per_call"].values())
  assert results["channels"] == {"4:4": [4, 8, 12], "5:3": [5, 8, 11]}
  assert "| 4:4 | all multiples of 4 |" in run.stdout
  assert "| 5:3 | 2 of 3 not multiples of 4 |" in run.stdout


@pytest.mark.parametrize("value", ["16", "a:3", "0:12", "16:-1"])
def test_a_bad_block_is_named(value):
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  module = importlib.import_module("batch_norm_channels")
  with pytest.raises(ValueError, match=repr(value)):
    module.parse_block(value)
