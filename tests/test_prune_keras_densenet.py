"""examples/prune_keras_densenet.py refuses bad flags before building anything.

Its whole flow (make_prunable -> prune_dense_connections -> fit with
UpdatePruningStep -> strip_to_compact -> export) is tested on a small
applications-style DenseNet in test_convert.py; a real DenseNet121 run takes
minutes on 2 CPU cores, so it is not repeated here.
"""

import os
import subprocess
import sys

import pytest

from tests import helpers
from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "prune_keras_densenet.py")


@pytest.mark.parametrize("flag,value,message", [
    ("weights", "/no/such/densenet121_notop.h5",
     "'/no/such/densenet121_notop.h5'"),
    ("final_sparsity", "1.5", "--final_sparsity must be in (0, 1). "
     "Received: 1.5"),
    ("image_size", "16", "--image_size must be >= 32. Received: 16"),
])
def test_bad_flag_is_named_and_nothing_is_written(tmp_path, flag, value,
                                                  message):
  records = write_tfrecords(tmp_path / "cifar", count=4)
  model_dir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, SCRIPT, f"--dataset=tfrecord:{records}",
       f"--model_dir={model_dir}", f"--{flag}={value}"],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env=helpers.script_env())
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("prune_keras_densenet.py: error: ")
  assert message in last and "Traceback" not in result.stderr
  assert not model_dir.exists()
