"""The Keras 3 path on its other backend and without TensorFlow.

`tests/keras3` runs in this process on Keras 3's default backend
(TensorFlow). Here it runs again on JAX in a process of its own (a backend
is fixed when Keras is first imported, so Keras' own CI runs one backend per
process), and a child process with TensorFlow, tf_keras and tfmot blocked
builds, prunes in stages, strips and reads CIFAR records through
`tfsdn.keras3` on JAX.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, backend, timeout):
  return subprocess.run(
      args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
      env={**os.environ, "KERAS_BACKEND": backend,
           "TF_CPP_MIN_LOG_LEVEL": "3"}, check=False)


def test_the_keras3_suite_passes_on_jax():
  pytest.importorskip("jax")
  # All but the parts whose work does not depend on the backend, to keep
  # the suite's time: the README snippet (two minutes on JAX here) trains,
  # strips and exports with the same calls as tests/keras3, and on JAX
  # tests/test_train_cifar_keras3.py and the TensorFlow-free child below
  # train and strip, and tests/keras3/test_export.py exports; the strip's
  # property test builds the same graphs as the fixed strip cases, which
  # run here; migration copies NumPy weights between tf_keras and Keras 3.
  # Converting a whole applications DenseNet-121 is graph surgery (a small
  # converted model still prunes and strips here); MAC budgets are planned
  # by the backend-free tfsdn.common.allocation (the JAX evidence runner
  # below prunes to one); which outputs an export names is decided before
  # the backend traces it (the logits exports run here).
  deselected = [
      "tests/keras3/test_readme_keras3.py::test_keras3_snippet_runs",
      "tests/keras3/test_strip.py::test_any_live_pattern_keeps_the_function",
      "tests/keras3/test_migrate.py",
      "tests/keras3/test_convert.py::"
      "test_applications_densenet121_converts_with_its_function",
      "tests/keras3/test_pruning.py::"
      "test_a_mac_budget_is_met_and_ignored_layers_keep_inputs_and_filters",
      "tests/keras3/test_pruning.py::"
      "test_global_allocation_meets_its_mac_budget_after_strip",
      "tests/keras3/test_export.py::"
      "test_a_softmax_model_exports_probabilities_only_in_every_format"]
  result = _run([sys.executable, "-m", "pytest", "-q", "-p",
                 "no:cacheprovider", "tests/keras3"] + [
                     f"--deselect={d}" for d in deselected],
                "jax", timeout=1500)
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
  assert " passed" in result.stdout


NO_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, os, sys
    BLOCKED = ("tensorflow", "tf_keras", "tensorflow_model_optimization",
               "tf2onnx", "tensorflow_datasets")

    class Blocker(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
          raise ModuleNotFoundError(f"{name} is blocked", name=name)
        return None

    sys.meta_path.insert(0, Blocker())
    import numpy as np
    import tfsdn
    try:
      tfsdn.prune_dense_connections
      raise SystemExit("the tfmot path should be unavailable")
    except ImportError as e:
      assert "tfsdn.keras3" in str(e), e
    import keras
    import tfsdn.keras3 as sdn
    assert keras.backend.backend() == "jax"
    model = sdn.densenet.DenseNet(depth=10, growth_rate=4)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    pruning = sdn.Pruning([(2, 0.25), (3, 0.5)])
    model.fit(images, rng.integers(0, 10, 16), batch_size=4, verbose=0,
              callbacks=[pruning])
    assert [h["step"] for h in pruning.history] == [2, 3]
    layer = model.get_layer("transition2")
    assert len(layer.pruned_channels()) == sdn.stages.pruned_count(
        layer.input_channels, 0.5)
    compact = sdn.strip(model).model
    difference = np.abs(np.asarray(compact(images)) - np.asarray(model(images)))
    assert difference.max() < 1e-4, difference.max()
    record = os.environ.get("TFSDN_TEST_RECORD")
    if record:
      pixels, labels = sdn.data.read_tfrecord(record, limit=4)
      assert pixels.shape == (4, 32, 32, 3), pixels.shape
    loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not loaded, loaded
    print("OK")
""")


def test_the_keras3_path_runs_without_tensorflow(tmp_path):
  pytest.importorskip("jax")
  shared = os.path.join(ROOT, "..", "shared", "data", "cifar10",
                        "test.tfrecord")
  env_record = shared if os.path.exists(shared) else ""
  result = subprocess.run(
      [sys.executable, "-c", NO_TENSORFLOW], cwd=str(tmp_path),
      capture_output=True, text=True, timeout=600, check=False,
      env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": ROOT,
           "TFSDN_TEST_RECORD": env_record})
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stdout.strip().endswith("OK")


def test_the_jax_evidence_runner_is_deterministic_and_tabulates(tmp_path):
  pytest.importorskip("jax")
  import json  # pylint: disable=g-import-not-at-top
  write_tfrecords(tmp_path, count=48)
  outputs = []
  # Both arms, then (to keep the suite's time) one of them again from
  # scratch: its trunk and its arm come out bit for bit the same.
  for run, arms in (("a", "el1_global@0.5,random_matched@0.5"),
                    ("b", "random_matched@0.5")):
    output = tmp_path / run
    result = _run([
        sys.executable, "benchmarks/evidence_keras3.py", "--backend=jax",
        f"--dataset=tfrecord:{tmp_path}", f"--output_dir={output}",
        f"--work_dir={tmp_path / ('work' + run)}", "--depth=10",
        "--growth_rate=3", "--epochs=3", "--trunk_epochs=1",
        "--lr_drop_epochs=2", "--batch_size=8", "--train_size=32",
        "--validation_size=16", "--seeds=0", f"--arms={arms}"], "jax", 900)
    assert result.returncode == 0, result.stderr[-4000:]
    outputs.append(output)
  first, second = (json.loads((o / "seed0" / "random_matched@0.5.json")
                              .read_text()) for o in outputs)
  assert first["test_predictions"] == second["test_predictions"]
  assert first["train_loss"] == second["train_loss"]
  matched = json.loads((outputs[0] / "seed0" /
                        "random_matched@0.5.json").read_text())
  guided = json.loads((outputs[0] / "seed0" /
                       "el1_global@0.5.json").read_text())
  for stage, twin in zip(matched["stages"], guided["stages"]):
    assert stage["step"] == twin["step"]
    assert {n: r[0] for n, r in stage["layers"].items()} == {
        n: r[0] for n, r in twin["layers"].items()}
  table = _run([sys.executable, "benchmarks/evidence_table.py",
                f"--results_dir={outputs[0]}"], "jax", 300)
  assert table.returncode == 0, table.stderr[-3000:]
  assert "random_matched@0.5" in table.stdout


def test_the_three_paths_train_alike_from_the_same_start(tmp_path):
  # tfmot, Keras 3 on TensorFlow and Keras 3 on JAX, from the same initial
  # weights on the same batches: the same first-epoch loss, and the same
  # compact MACs after two stages up to the few near-tied channels that
  # float rounding can order differently.
  pytest.importorskip("jax")
  import json  # pylint: disable=g-import-not-at-top
  write_tfrecords(tmp_path, count=96)
  output = tmp_path / "side.json"
  default_start = os.path.join(ROOT, "docs",
                               "keras3_side_by_side.json.init.npz")
  had_default_start = os.path.exists(default_start)
  result = _run([sys.executable, "benchmarks/keras3_side_by_side.py",
                 f"--dataset=tfrecord:{tmp_path}", f"--output={output}",
                 "--depth=10", "--growth_rate=4", "--train_size=96",
                 "--test_size=32", "--epochs=4", "--batch_size=16"],
                "tensorflow", 900)
  assert result.returncode == 0, result.stderr[-4000:]
  runs = {r["path"]: r for r in json.loads(output.read_text())["runs"]}
  assert set(runs) == {"tfmot", "keras3:tensorflow", "keras3:jax"}
  first = [r["epoch_loss"][0] for r in runs.values()]
  assert max(first) - min(first) < 1e-3 * max(first), first
  ratios = [r["mac_ratio"] for r in runs.values()]
  assert max(ratios) - min(ratios) < 0.02, ratios
  assert not list(tmp_path.glob("*.init.npz"))  # the shared start is removed
  # The children shared it next to --output, not next to the default one.
  assert had_default_start or not os.path.exists(default_start)
