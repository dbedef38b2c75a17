"""benchmarks/deploy_speed.py end to end, tiny."""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys

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
    runtimes += ["litert_int8", "litert_int8_shared"]
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
  # int8 without requantizations: only the input's QUANTIZE is left.
  if "litert_int8_shared" in runtimes:
    assert results["ops"]["compact/litert_int8"]["QUANTIZE"] > 1
    assert all(results["ops"][f"{model}/litert_int8_shared"]["QUANTIZE"] == 1
               for model in models | {"dense", "dense_c2"})
  # At this size a file is mostly its graph, so only check one is there.
  assert all(results["file_bytes"][f"{model}/{runtime}"] > 0
             for model in models | {"dense", "dense_c2"}
             for runtime in runtimes)


def test_pool_first_and_reuse_concats_add_models_dense_included(tmp_path):
  results = _deploy_speed(tmp_path / "deploy.json", "--batch_sizes=1",
                          "--runtimes=tf", "--pool_first", "--reuse_concats",
                          "--isolate=false")
  assert results["pool_first"] is True and results["reuse_concats"] is True
  assert set(results["speedup_by_model"]) == {
      "compact", "compact_pf", "compact_r", "compact_pf_r"}
  # A dense model reusing concatenations has a DenseNet's running ones.
  assert results["largest_concat"]["dense_r"] == 2
  assert results["largest_concat"]["dense_pf_r"] == 2
  assert results["largest_concat"]["dense"] > 2
  assert results["macs"]["compact_pf_r"] == results["macs"]["compact_pf"]
  assert results["compact_max_abs_diff_from_keras"]["compact_pf_r/tf"] < 1e-4
  macs = results["macs"]
  assert macs["dense_pf"] < macs["dense"] and macs["compact_pf"] < macs[
      "compact"]
  assert results["ideal_speedup_mac_ratio"] == pytest.approx(
      macs["dense_pf"] / macs["compact_pf"])
  assert results["compact_max_abs_diff_from_keras"]["compact_pf/tf"] < 1e-4
  assert results["dense_model"]["tf@1"] in (
      "dense", "dense_pf", "dense_r", "dense_pf_r")


def test_unfused_batch_norm_adds_models_dense_included(tmp_path):
  results = _deploy_speed(tmp_path / "deploy.json", "--batch_sizes=1",
                          "--runtimes=tf", "--unfused_batch_norm",
                          "--isolate=false")
  assert results["unfused_batch_norm"] is True
  assert set(results["speedup_by_model"]) == {"compact", "compact_u"}
  assert results["macs"]["compact_u"] == results["macs"]["compact"]
  assert results["compact_max_abs_diff_from_keras"]["compact_u/tf"] < 1e-4
  assert results["dense_model"]["tf@1"] in ("dense", "dense_u")


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
  assert deploy_speed._slice_costs(["500000", "0"]) == [0, 500000]  # pylint: disable=protected-access


@pytest.mark.parametrize("values", ["1", "-2", "0,0", "x", "2.5", ""])
def test_concat_limits_are_0_or_whole_numbers_of_at_least_2(values):
  sys.path.insert(0, os.path.dirname(SCRIPT))
  deploy_speed = importlib.import_module("deploy_speed")
  with pytest.raises(app.UsageError, match="--max_concat_inputs"):
    deploy_speed._concat_limits(values.split(",") if values else [])  # pylint: disable=protected-access
  assert deploy_speed._concat_limits(["5", "0"]) == [None, 5]  # pylint: disable=protected-access


@pytest.mark.skipif(not importlib.util.find_spec("ai_edge_litert"),
                    reason="needs the litert extra")
def test_xnnpack_takes_a_concatenation_of_at_most_five_inputs(tmp_path):
  # The fact that makes a compact layer's ~20-input concatenation cost a
  # delegate partition (README, "Deployment speed"), for the pinned LiteRT.
  output = tmp_path / "concat.json"
  subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "xnnpack_concat.py"),
       "--inputs=5,6", f"--output={output}"],
      capture_output=True, text=True, cwd=ROOT, timeout=300, check=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert json.loads(output.read_text())["delegate_partitions"] == {
      "5": 1, "6": 2}


def test_medians_of_separate_runs():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  median = importlib.import_module("deploy_speed_median")

  def run(a, b, extra=None):
    ratios = {"compact": {"tf@1": a}, "compact_s5": {"tf@1": b}}
    if extra is not None:
      ratios["compact"]["litert_f16@1"] = extra
    return {"patterns": "trained", "slice_cost_macs": {"compact": 0},
            "macs": {"dense": 10}, "speedup_by_model": ratios}

  integer_costs = run(1.0, 1.0)
  integer_costs["slice_cost_macs"] = {"compact": 0.0}  # Older runs' floats.
  by_model, best = median.medians(
      [run(0.8, 1.3), run(1.5, 0.9, extra=1.2), integer_costs])
  assert by_model["compact"]["tf@1"] == {"median": 1.0,
                                         "runs": [0.8, 1.5, 1.0]}
  assert by_model["compact_s5"]["tf@1"]["median"] == 1.0
  assert best["litert_f16@1"] == {"model": "compact", "median": 1.2,
                                  "runs": 1}
  # Ties go to the first model; a higher median wins whatever one run says.
  assert best["tf@1"]["model"] == "compact"
  by_model, best = median.medians([run(0.8, 1.3), run(1.5, 1.4),
                                   run(1.0, 1.1)])
  assert best["tf@1"] == {"model": "compact_s5", "median": 1.3, "runs": 3}
  other = run(1.0, 1.0)
  other["patterns"] = "random"
  with pytest.raises(ValueError, match="'patterns'"):
    median.medians([run(1.0, 1.0), other])
  with pytest.raises(ValueError, match="at least one run"):
    median.medians([])


def test_medians_among_some_models_only():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  median = importlib.import_module("deploy_speed_median")
  run = {"patterns": "trained", "slice_cost_macs": {}, "macs": {
      "dense": 10, "dense_r": 10, "compact": 4, "compact_r": 4},
         "images_per_second": {"dense/tf@1": 100.0, "dense_r/tf@1": 200.0,
                               "compact/tf@1": 150.0,
                               "compact_r/tf@1": 260.0}}
  # Against the faster dense model of those that match.
  plain = median.restricted(run, ".*(?<!_r)")
  assert plain["speedup_by_model"] == {"compact": {"tf@1": 1.5}}
  assert set(plain["macs"]) == {"dense", "compact"}
  # The ideal from the matching models' MACs, not the run's.
  run["ideal_speedup_mac_ratio"] = 99.0
  run["macs"]["compact"] = 5
  assert median.restricted(run, ".*(?<!_r)")["ideal_speedup_mac_ratio"] == 2.0
  run["macs"]["compact"] = 4
  every = median.restricted(run, ".*")
  assert every["speedup_by_model"] == {"compact": {"tf@1": 0.75},
                                       "compact_r": {"tf@1": 1.3}}
  _, best = median.medians([plain, plain])
  assert best["tf@1"] == {"model": "compact", "median": 1.5, "runs": 2}
  assert median.fastest_dense([plain, every]) == {
      "tf@1": {"median": 150.0, "models": ["dense", "dense_r"]}}
  with pytest.raises(ValueError, match="models='compact.*'"):
    median.restricted(run, "compact.*")


def test_best_mode_takes_each_model_in_its_fastest_runtime():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  median = importlib.import_module("deploy_speed_median")

  def run(dense_xla, compact_xla):
    return {"macs": {"dense": 10, "dense_u": 10, "compact": 4},
            "ideal_speedup_mac_ratio": 2.5,
            "images_per_second": {
                "dense/tf@1": 100.0, "dense_u/tf@1": 110.0,
                "dense/tf_xla@1": dense_xla, "dense_u/tf_xla@1": 90.0,
                "compact/tf@1": 120.0, "compact/tf_xla@1": compact_xla,
                "compact/onnx@1": 999.0}}

  found = median.best_mode([run(80.0, 200.0), run(220.0, 110.0),
                            run(100.0, 165.0)], ["tf", "tf_xla"])
  # 200/110, 120/220, 165/110: the median 1.5, of an ideal 2.5.
  assert found["1"]["runs"] == pytest.approx([200 / 110, 120 / 220, 1.5])
  assert found["1"]["median"] == pytest.approx(1.5)
  assert found["1"]["of_ideal"] == pytest.approx(0.6)
  assert found["1"]["compact"] == ["compact/tf_xla", "compact/tf",
                                   "compact/tf_xla"]
  assert found["1"]["dense"] == ["dense_u/tf", "dense/tf_xla", "dense_u/tf"]
  # A model left out by `restricted` (not in "macs") does not count.
  narrowed = run(80.0, 200.0)
  del narrowed["macs"]["dense_u"]
  assert median.best_mode([narrowed], ["tf", "tf_xla"])["1"]["runs"] == [
      2.0]
  with pytest.raises(ValueError, match="'litert'"):
    median.best_mode([run(80.0, 200.0)], ["tf", "litert"])
  # Batch sizes come from the runtimes asked for only.
  other = run(80.0, 200.0)
  other["images_per_second"].update({"dense/onnx@8": 5.0,
                                     "compact/onnx@8": 6.0})
  assert set(median.best_mode([other], ["tf", "tf_xla"])) == {"1"}
  other["images_per_second"]["compact/tf@4"] = 6.0
  with pytest.raises(ValueError,
                     match="only \\['compact'\\] models at batch 4"):
    median.best_mode([other], ["tf", "tf_xla"])


def test_targets_read_from_the_medians():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  median = importlib.import_module("deploy_speed_median")

  def run(compact_tf64, int8_accuracy):
    speeds = {"dense/tf@64": 100.0, "dense/tf@1": 100.0,
              "dense/tf_xla@64": 150.0, "dense/litert_int8@1": 100.0,
              "compact/tf@64": compact_tf64, "compact/tf@1": 90.0,
              "compact/tf_xla@64": 200.0, "compact/litert_int8@1": 150.0}
    ratios = {}
    for key, speed in speeds.items():
      model, timed = key.split("/")
      if model == "compact":
        ratios.setdefault(model, {})[timed] = speed / speeds[f"dense/{timed}"]
    return {"patterns": "trained", "slice_cost_macs": {"compact": 0},
            "macs": {"dense": 10, "dense_r": 10, "compact": 4},
            "ideal_speedup_mac_ratio": 2.0, "images_per_second": speeds,
            "speedup_by_model": ratios, "eval_images": 1000,
            "compact_accuracy": {"keras": 0.5,
                                 "compact/litert_int8": int8_accuracy},
            "file_bytes": {"dense/litert_int8": 1000, "dense_r/litert_int8":
                           800, "compact/litert_int8": 500}}

  runs = [run(130.0, 0.52), run(150.0, 0.485), run(160.0, 0.49)]
  _, best = median.medians(runs)
  rows = {row["target"]: row for row in median.targets(runs, best)}
  assert rows["TF plain, batch 64"] == {
      "target": "TF plain, batch 64", "figure": 1.5, "at_least": 1.4,
      "met": True, "model": "compact", "detail": None}
  assert rows["ONNX Runtime, batch 64"]["met"] is None  # Not timed.
  assert rows["LiteRT int8, batch 1"]["met"]  # 1.5x.
  assert rows["tf, batch 1, never slower"]["figure"] == pytest.approx(0.9)
  assert rows["tf, batch 1, never slower"]["met"] is False
  assert "tf_xla, batch 1, never slower" not in rows  # Not timed at 1.
  # Best of tf and tf_xla per run: 200/150, 200/150, 200/150 of 2.0.
  tf_mode = rows["best TF mode, batch 64, of the ideal"]
  assert tf_mode["figure"] == pytest.approx(2 / 3)
  assert tf_mode["met"] is False and "in tf/tf_xla" in tf_mode["detail"]
  # int8 - float: +2, -1.5, -1 points; the median distance 1.5 is not
  # within 1 point (the signed median, -1, would have been).
  accuracy = rows["LiteRT int8 accuracy, points from float"]
  assert accuracy["figure"] == pytest.approx(1.5) and not accuracy["met"]
  assert "+2.00 / -1.50 / -1.00 points on 1000 test images" in accuracy[
      "detail"]
  runs[0]["compact_accuracy"]["compact/litert_int8"] = 0.49  # -1: at 1.
  accuracy = {row["target"]: row for row in median.targets(runs, best)}[
      "LiteRT int8 accuracy, points from float"]
  assert accuracy["figure"] == pytest.approx(1.0) and accuracy["met"]
  # Against the smallest dense int8 file: 500 / 800.
  size = rows["LiteRT int8 file, of the smallest dense int8 file"]
  assert size["figure"] == pytest.approx(0.625) and size["met"] is False
  # A dense model not among the run's models (`restricted` narrows "macs")
  # does not count for the file.
  for run_ in runs:
    run_["file_bytes"]["dense_x/litert_int8"] = 100
  size = {row["target"]: row for row in median.targets(runs, best)}[
      "LiteRT int8 file, of the smallest dense int8 file"]
  assert size["figure"] == pytest.approx(0.625)
  runs[0]["eval_images"] = 999  # The least of the runs counts.
  accuracy = {row["target"]: row for row in median.targets(runs, best)}[
      "LiteRT int8 accuracy, points from float"]
  assert accuracy["met"] is None and "on 999 test images" in accuracy[
      "detail"]
  table = median.format_targets(list(rows.values()))
  assert "| TF plain, batch 64 | 1.500 | >= 1.40 | yes | compact |" in table
  assert "| ONNX Runtime, batch 1 | - | >= 1.30 | not measured | - |" in table
  assert "| 0.625 | <= 0.55 | **no** | compact |" in table
  assert "too little data" in median.format_targets([accuracy])
