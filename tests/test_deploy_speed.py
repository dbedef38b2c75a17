"""benchmarks/deploy_speed.py end to end, tiny."""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

from absl import app
import pytest

import tfsdn
from tfsdn import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "deploy_speed.py")


def _deploy_speed(output, *args):
  """Runs deploy_speed.py on a tiny DenseNet; returns its JSON results.

  The run gets a TMPDIR of its own, which must hold no folder of tfsdn's
  afterwards: the exports are removed (ONNX Runtime leaves a `.ses` file).
  """
  tmp = output.parent / "tmp"
  tmp.mkdir(exist_ok=True)
  subprocess.run(
      [sys.executable, SCRIPT, "--depth=10", "--growth_rate=4", "--rounds=1",
       "--seconds=0.05", "--slice_cost_macs=0", *args, f"--output={output}"],
      capture_output=True, text=True, cwd=ROOT, timeout=600, check=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp),
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get(
                   "PYTHONPATH", "")])))
  assert not list(tmp.glob("tfsdn-*"))
  return json.loads(output.read_text())


def test_dense_and_compact_side_by_side(tmp_path):
  runtimes = ["tf"]
  if importlib.util.find_spec("ai_edge_litert"):
    # float16 conversion is checked in tests/test_export.py.
    runtimes += ["litert_int8"]
  if importlib.util.find_spec("tf2onnx"):
    runtimes += ["onnx"]
  results = _deploy_speed(
      tmp_path / "deploy.json", "--batch_sizes=1,2", "--calibration_images=4",
      f"--runtimes={','.join(runtimes)}", "--channel_reads=slice,gather",
      "--max_concat_inputs=0,2")
  assert results["patterns"].startswith("random")
  # Each runtime was timed in a process of its own (which, for LiteRT and
  # ONNX Runtime, did not import TensorFlow: deploy_speed checks it).
  assert results["isolated_runtimes"] is True
  assert set(results["speedup"]) == {f"{r}@{b}" for r in runtimes
                                     for b in (1, 2)}
  assert results["macs"]["compact"] < results["macs"]["dense"]
  assert results["compact_max_abs_diff_from_keras"]["compact/tf"] < 1e-4
  # Concatenations of at most 2 inputs, in the dense and compact models:
  # the same function and MACs.
  largest = results["largest_concat"]
  assert largest["dense"] == 3 and largest["compact"] > 2
  assert all(largest[f"{m}_c2"] == 2 for m in ("dense", "compact",
                                                "compact_gather"))
  assert results["compact_max_abs_diff_from_keras"]["compact_c2/tf"] < 1e-4
  assert results["macs"]["compact_c2"] == results["macs"]["compact"]
  # Each ratio is against the fastest dense model of its runtime and batch.
  speed = results["images_per_second"]
  assert set(results["dense_model"]) == set(results["speedup"])
  for key, dense in results["dense_model"].items():
    runtime, batch = key.split("@")
    assert dense == max(("dense", "dense_c2"),
                        key=lambda d: speed[f"{d}/{runtime}@{batch}"])
    for model, ratios in results["speedup_by_model"].items():
      assert ratios[key] == pytest.approx(
          speed[f"{model}/{key}"] / speed[f"{dense}/{key}"])
  # Gather reads: one gather per layer that reads part of its input, the
  # same function in the float32 runtimes.
  assert 0 < results["slices"]["compact_gather"] < results["slices"][
      "compact"]
  for runtime in {"tf", "onnx"} & set(runtimes):
    assert results["compact_max_abs_diff_from_keras"][
        f"compact_gather/{runtime}"] < 1e-4
  models = {"compact", "compact_c2", "compact_gather", "compact_gather_c2"}
  assert set(results["speedup_by_model"]) == models
  for key, best in results["best"].items():
    assert best["speedup"] == max(results["speedup_by_model"][m][key]
                                  for m in models)
  # At this size a file is mostly its graph, so only check one is there.
  assert all(results["file_bytes"][f"{model}/{runtime}"] > 0
             for model in models | {"dense", "dense_c2"}
             for runtime in runtimes)


def test_layout_options_add_models_dense_included(tmp_path):
  # One run for the three options (each run is a fresh process).
  results = _deploy_speed(tmp_path / "deploy.json", "--batch_sizes=1",
                          "--runtimes=tf", "--pool_first", "--reuse_concats",
                          "--unfused_batch_norm", "--isolate=false")
  assert results["pool_first"] is True and results["reuse_concats"] is True
  assert results["unfused_batch_norm"] is True
  assert set(results["speedup_by_model"]) == {
      "compact", "compact_pf", "compact_r", "compact_pf_r", "compact_u",
      "compact_pf_u", "compact_r_u", "compact_pf_r_u"}
  # A dense model reusing concatenations has a DenseNet's running ones.
  assert results["largest_concat"]["dense_r"] == 2
  assert results["largest_concat"]["dense_pf_r"] == 2
  assert results["largest_concat"]["dense"] > 2
  macs = results["macs"]
  assert macs["compact_pf_r"] == macs["compact_pf"]
  assert macs["compact_u"] == macs["compact"]
  assert macs["dense_pf"] < macs["dense"] and macs["compact_pf"] < macs[
      "compact"]
  assert results["ideal_speedup_mac_ratio"] == pytest.approx(
      macs["dense_pf"] / macs["compact_pf"])
  for name in ("compact_pf", "compact_pf_r", "compact_u", "compact_pf_r_u"):
    assert results["compact_max_abs_diff_from_keras"][f"{name}/tf"] < 1e-4
  assert results["dense_model"]["tf@1"] in (
      "dense", "dense_pf", "dense_r", "dense_pf_r", "dense_u", "dense_pf_u",
      "dense_r_u", "dense_pf_r_u")


def test_runtime_timing_names_an_unknown_runtime():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  runtime_timing = importlib.import_module("runtime_timing")
  with pytest.raises(ValueError, match="runtime='tflite'"):
    runtime_timing.time_in_child("tflite", {}, [1], 1, 0.1, 1)


def test_tf_fusible_clusters_all_but_the_convolutions(tmp_path, monkeypatch):
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  runtime_timing = importlib.import_module("runtime_timing")
  model = tfsdn.densenet.DenseNet(10, 4)
  testing.prune_at_random(model, 0.5, 0)
  path = tfsdn.export_saved_model(
      tfsdn.strip(model, fused_batch_norm=False, slice_cost_macs=0).model,
      str(tmp_path / "sm"))
  # The timing child keeps TF_XLA_FLAGS of its parent and adds its own, so
  # XLA's clustering debug dump shows what it clustered.
  monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_clustering_debug")
  monkeypatch.setenv("TF_DUMP_GRAPH_PREFIX", str(tmp_path / "dump"))
  timed, imported_tf = runtime_timing.time_in_child(
      "tf_fusible", {"compact": path}, [2], 1, 0.05, 1)
  assert imported_tf and timed[("compact", 2)] > 0
  clustered, not_clustered = set(), set()
  for name in os.listdir(tmp_path / "dump"):
    if name.startswith("mark_for_compilation_annotated"):
      text = (tmp_path / "dump" / name).read_text()
      for node in text.split("\nnode {")[1:]:
        op = re.search(r'op: "([^"]+)"', node).group(1)
        (clustered if "_XlaCluster" in node else not_clustered).add(op)
  assert {"StridedSlice", "ConcatV2", "Mul", "AddV2", "Relu"} <= clustered
  assert "Conv2D" in not_clustered and "Conv2D" not in clustered


def test_tf_fusible_times_the_plain_saved_model_in_its_own_process(tmp_path):
  results = _deploy_speed(tmp_path / "deploy.json", "--batch_sizes=1",
                          "--runtimes=tf,tf_fusible")
  assert set(results["speedup"]) == {"tf@1", "tf_fusible@1"}
  assert results["images_per_second"]["compact/tf_fusible@1"] > 0
  # The plain SavedModel, exported once; this process cannot serve it with
  # the child's flags, so it reports no output difference for it.
  assert results["file_bytes"]["compact/tf_fusible"] == results[
      "file_bytes"]["compact/tf"]
  assert set(results["compact_max_abs_diff_from_keras"]) == {"compact/tf"}


def test_tf_fusible_needs_isolate(tmp_path):
  with pytest.raises(subprocess.CalledProcessError) as raised:
    _deploy_speed(tmp_path / "deploy.json", "--runtimes=tf,tf_fusible",
                  "--isolate=false")
  assert "tf_fusible needs --isolate" in raised.value.stderr


@pytest.mark.parametrize("values", ["0,0.0", "-5", "1.5", "abc", "1e400"])
def test_slice_costs_must_be_distinct_whole_numbers(values):
  sys.path.insert(0, os.path.dirname(SCRIPT))
  deploy_speed = importlib.import_module("deploy_speed")
  with pytest.raises(app.UsageError, match="--slice_cost_macs"):
    deploy_speed._slice_costs(values.split(","))  # pylint: disable=protected-access
  with pytest.raises(app.UsageError, match="--target_slice_costs"):
    deploy_speed._slice_costs(values.split(","), "target_slice_costs")  # pylint: disable=protected-access
  assert deploy_speed._slice_costs(["500000", "0"]) == [0, 500000]  # pylint: disable=protected-access


@pytest.mark.parametrize("values", ["1", "-2", "0,0", "x", "2.5", ""])
def test_concat_limits_are_0_or_whole_numbers_of_at_least_2(values):
  sys.path.insert(0, os.path.dirname(SCRIPT))
  deploy_speed = importlib.import_module("deploy_speed")
  with pytest.raises(app.UsageError, match="--max_concat_inputs"):
    deploy_speed._concat_limits(values.split(",") if values else [])  # pylint: disable=protected-access
  assert deploy_speed._concat_limits(["5", "0"]) == [None, 5]  # pylint: disable=protected-access


def test_paused_stops_a_background_process_and_resumes_it():
  sys.path.insert(0, os.path.dirname(SCRIPT))
  import runtime_timing  # pylint: disable=g-import-not-at-top
  child = subprocess.Popen(["sleep", "30"])
  state = lambda: runtime_timing._state(child.pid)  # pylint: disable=protected-access
  try:
    with runtime_timing.Paused([str(child.pid)]):
      assert state() == "T"
    time.sleep(0.2)
    assert state() in ("S", "R")
  finally:
    child.kill()
    child.wait()


def test_paused_refuses_process_groups_and_resumes_what_it_stopped():
  sys.path.insert(0, os.path.dirname(SCRIPT))
  import runtime_timing  # pylint: disable=g-import-not-at-top
  for bad in ("0", "-1", "1", str(os.getpid()), "99999999999", "x", "²"):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
      runtime_timing.Paused([bad])
  child = subprocess.Popen(["sleep", "30"])
  try:
    paused = runtime_timing.Paused([str(child.pid)])
    paused.pids.append(2**40)  # os.kill fails on it after the first stop
    with pytest.raises(OverflowError):
      paused.__enter__()
    time.sleep(0.2)
    assert runtime_timing._state(child.pid) in ("S", "R")  # pylint: disable=protected-access
  finally:
    child.kill()
    child.wait()


def test_paused_skips_a_process_that_ended_after_its_flag_was_checked():
  sys.path.insert(0, os.path.dirname(SCRIPT))
  import runtime_timing  # pylint: disable=g-import-not-at-top
  child = subprocess.Popen(["sleep", "30"])
  pids = runtime_timing.pause_pids([str(child.pid)])  # running now
  child.kill()
  child.wait()
  with runtime_timing.Paused(pids) as paused:  # ended: nothing to stop
    assert paused.stopped == []
