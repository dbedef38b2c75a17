"""examples/export_model.py checks its flags before loading anything, and a
mistake is one line, the last printed. The export itself runs in
test_train_cifar.py (test_late_failure_...)."""

import os
import subprocess
import sys

import pytest

from tests import helpers
from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "export_model.py")


@pytest.fixture
def paths(tmp_path):
  model = tmp_path / "run" / "final_model.keras"
  model.parent.mkdir()
  model.write_text("never loaded: the flags are refused first")
  (tmp_path / "sdn" / "2").mkdir(parents=True)
  return dict(model=model.parent, export_dir=tmp_path / "sdn",
              dataset=f"tfrecord:{write_tfrecords(tmp_path / 'cifar', 2)}")


@pytest.mark.parametrize("overrides, message", [
    (dict(version=0), "--version must be >= 1 (TF Serving serves versions "
     "1, 2, ...). Received: 0"),
    (dict(version=2), "sdn/2'; pass --overwrite to replace it"),
    (dict(model="nowhere"), "--model='nowhere' is neither a training run "
     "directory holding final_model.keras nor a .keras file."),
    (dict(dataset="tfrecord:nowhere"), "--dataset: TFRecord directory "
     "'nowhere' does not exist"),
    (dict(slice_cost_macs=-5), "--slice_cost_macs must be a finite number "
     ">= 0. Received: -5.0"),
    (dict(max_concat_inputs=1), "--max_concat_inputs must be 0 (no bound) "
     "or >= 2. Received: 1"),
    (dict(target="tensorrt@1"), "--target takes RUNTIME@BATCH, RUNTIME one "
     "of ('tf', 'tf_xla', 'litert', 'litert_int8', 'onnx') (e.g. tf@1). "
     "Received: 'tensorrt@1'"),
    (dict(target="tf@0"), "Received: 'tf@0'"),
    (dict(model=None), "flag --model=None: Flag --model must have a value "
     "other than None."),
])
def test_mistakes_are_one_line_before_loading(paths, overrides, message):
  flags = dict(paths, **overrides)
  args = [f"--{k}={v}" for k, v in flags.items() if v is not None]
  result = subprocess.run(
      [sys.executable, SCRIPT, *args], capture_output=True, text=True,
      cwd=ROOT, timeout=300, env=helpers.script_env())
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("export_model.py: error: ") and message in last
  assert "Traceback" not in result.stderr
  assert "--tflite_path" not in result.stderr  # no flag help


def test_a_model_of_any_image_size_is_exported_at_the_data_size(tmp_path):
  model = helpers.tiny_densenet(input_shape=(None, None, 3))
  helpers.prune_randomly(model, 0.5)
  model.save(tmp_path / "any_size.keras")
  result = subprocess.run(
      [sys.executable, SCRIPT, f"--model={tmp_path / 'any_size.keras'}",
       f"--export_dir={tmp_path / 'sdn'}",
       f"--tflite_path={tmp_path / 'sdn.tflite'}",
       f"--dataset=tfrecord:{write_tfrecords(tmp_path / 'cifar', 4)}"],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env=helpers.script_env())
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Exported and verified" in result.stdout
  assert "total MACs per image" in result.stdout
