"""benchmarks/tf_op_profile.py end to end, tiny, and its op kinds."""

import importlib
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "tf_op_profile.py")


def _module():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  return importlib.import_module("op_kinds")


def test_profiles_dense_and_compact(tmp_path):
  output, tmp = tmp_path / "profile.json", tmp_path / "tmp"
  tmp.mkdir()
  run = subprocess.run(
      [sys.executable, SCRIPT, "--depth=10", "--growth_rate=4",
       "--batch_size=2", "--traces=1", "--timed=1", "--nofused_batch_norm",
       f"--output={output}"],
      capture_output=True, text=True, cwd=ROOT, timeout=300, check=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp),
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get(
                   "PYTHONPATH", "")])))
  assert not list(tmp.glob("tfsdn-*"))  # The exports are removed.
  results = json.loads(output.read_text())
  assert results["strip_options"]["fused_batch_norm"] is False
  assert results["macs"]["compact"] < results["macs"]["dense"]
  assert results["ideal"] == pytest.approx(
      results["macs"]["dense"] / results["macs"]["compact"])
  for model in ("dense", "compact"):
    ops, kinds = results["ops_by_type"][model], results["ms_by_kind"][model]
    # DenseNet-10: the stem, 2 layers in each of 3 blocks, 2 transitions.
    assert sum(n for op, n in ops.items() if "Conv2D" in op) == 9
    # Unfused BatchNormalization: no fused op ran.
    assert not any("FusedBatchNorm" in op for op in ops)
    assert kinds["convolution"] > 0 and kinds["batch norm and ReLU"] > 0
    assert sum(kinds.values()) == pytest.approx(
        sum(results["ms_by_op"][model].values()))
  # Only the compact model reads channel ranges (random 50% pruning).
  assert results["ms_by_kind"]["compact"]["channel reads"] > 0
  assert results["ms_by_kind"]["dense"]["channel reads"] == 0
  assert results["ratio_by_kind"]["channel reads"] == 0
  assert "| convolution |" in run.stdout


@pytest.mark.parametrize("op_type, kind", [
    ("_MklNativeConv2D", "convolution"),
    ("_MklNativeFusedMatMul", "convolution"),
    ("StridedSlice", "channel reads"), ("SplitV", "channel reads"),
    ("GatherV2", "channel reads"), ("ConcatV2", "concatenation"),
    ("_MklFusedBatchNormV3", "batch norm and ReLU"),
    ("Mul", "batch norm and ReLU"), ("AddV2", "batch norm and ReLU"),
    ("Relu", "batch norm and ReLU"), ("_MklNativeAvgPool", "pooling"),
    ("Mean", "pooling"), ("Const", "other"), ("_Retval", "other")])
def test_kinds_of_op_types(op_type, kind):
  assert _module().kind_of(op_type) == kind


def test_a_bad_pattern_is_named():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  pruned_models = importlib.import_module("pruned_models")
  with pytest.raises(ValueError, match="'stripes'"):
    pruned_models.pruned_and_dense(pattern="stripes")
