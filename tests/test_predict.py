"""examples/predict.py: what --saved_model and --tfrecord accept, images it
converts, and the one-line errors of common mistakes."""

import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfsdn
from tests import helpers
from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "predict.py")


def _load_script():
  spec = importlib.util.spec_from_file_location("predict_script", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # Defines its flags once per process.
  return module


predict = _load_script()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run directory whose export/ holds versions 1 and 3 of a tiny model."""
  run = tmp_path_factory.mktemp("run")
  path = tfsdn.export_saved_model(helpers.tiny_densenet(), run / "export")
  shutil.copytree(path, run / "export" / "3")
  write_tfrecords(run / "cifar", count=6)
  return run


def test_saved_model_may_be_a_version_a_base_or_a_run_directory(run_dir):
  version = str(run_dir / "export" / "1")
  assert predict.find_saved_model(version) == (version, None)
  newest = str(run_dir / "export" / "3")
  path, note = predict.find_saved_model(str(run_dir / "export"))
  assert path == newest and "newest of 2 version(s)" in note
  path, note = predict.find_saved_model(str(run_dir))
  assert path == newest and "(the run directory's export/)" in note


def test_saved_model_that_is_none_of_those_is_refused(run_dir, tmp_path):
  with pytest.raises(predict.UsageError, match="does not exist"):
    predict.find_saved_model(str(tmp_path / "nowhere"))
  with pytest.raises(predict.UsageError, match="holds no SavedModel"):
    predict.find_saved_model(str(run_dir / "cifar"))
  model_file = tmp_path / "final_model.keras"
  model_file.write_text("")
  with pytest.raises(predict.UsageError, match="is a file; give a SavedModel"):
    predict.find_saved_model(str(model_file))


def test_tfrecord_may_be_a_directory_holding_test_tfrecord(run_dir, tmp_path):
  records = run_dir / "cifar"
  assert predict.find_tfrecord(str(records)) == str(records / "test.tfrecord")
  with pytest.raises(predict.UsageError, match="without test.tfrecord"):
    predict.find_tfrecord(str(tmp_path))
  with pytest.raises(predict.UsageError, match="does not exist"):
    predict.find_tfrecord(str(tmp_path / "test.tfrecord"))
  not_records = tmp_path / "notes.txt"
  not_records.write_text("not a TFRecord file, just text")
  with pytest.raises(predict.UsageError, match="is not a TFRecord file"):
    predict.read_records(str(not_records), 2, predict.CIFAR10_CLASSES)


def test_records_are_named_with_label_and_class(run_dir):
  images, names, labels = predict.read_records(
      str(run_dir / "cifar" / "test.tfrecord"), 3, predict.CIFAR10_CLASSES)
  assert labels == [0, 1, 2]
  assert images.shape == (3, 32, 32, 3)
  assert [n.split("#")[1] for n in names] == [
      "0 (label 0, airplane)", "1 (label 1, automobile)", "2 (label 2, bird)"]


def test_images_are_converted_with_a_note(tmp_path):
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (20, 24, 1), dtype=np.uint8)
  rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
  rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  for name, image in [("grey.png", grey), ("rgba.png", rgba),
                      ("rgb.png", rgb)]:
    tf.io.write_file(str(tmp_path / name), tf.io.encode_png(image))
  paths = [str(tmp_path / n) for n in ("grey.png", "rgba.png", "rgb.png")]
  images, names, notes = predict.read_images(paths, (32, 32))
  assert images.shape == (3, 32, 32, 3) and names == paths
  assert len(notes) == 2  # The RGB 32x32 image needs no conversion.
  assert "grey converted to RGB" in notes[0]
  assert "resized from 20x24 to 32x32" in notes[0]
  assert "RGBA converted to RGB (alpha dropped)" in notes[1]
  np.testing.assert_array_equal(images[1], rgba[..., :3])
  np.testing.assert_array_equal(images[2], rgb)
  np.testing.assert_array_equal(images[0][..., 0], images[0][..., 2])
  assert "aspect ratio not kept" in notes[0]  # 20x24 -> 32x32
  square = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  tf.io.write_file(str(tmp_path / "square.png"), tf.io.encode_png(square))
  _, _, notes = predict.read_images([str(tmp_path / "square.png")], (32, 32))
  assert "resized from 64x64 to 32x32." in notes[0]


def test_missing_file_and_non_image_are_refused(tmp_path):
  with pytest.raises(predict.UsageError, match="does not exist"):
    predict.read_images([str(tmp_path / "cat.jpg")], (32, 32))
  text = tmp_path / "cat.jpg"
  text.write_text("not an image")
  with pytest.raises(predict.UsageError, match="not an image"):
    predict.read_images([str(text)], (32, 32))


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                        text=True, cwd=ROOT, env=helpers.script_env(),
                        timeout=300)


def test_run_directory_and_record_directory_classify(run_dir, tmp_path):
  samples = tmp_path / "images"
  result = _run(f"--saved_model={run_dir}", f"--tfrecord={run_dir / 'cifar'}",
                "--num_records=2", "--top_k=1", f"--save_images={samples}")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith(f"Using {run_dir / 'export' / '3'}")
  assert len(lines) == 4 and "(label 1, automobile): " in lines[2]
  assert "instances" not in result.stdout  # No request body unless asked.
  # The saved samples are the README's IMAGE... and classify the same.
  saved = [str(samples / "0_airplane.png"), str(samples / "1_automobile.png")]
  assert lines[3] == "Images saved: " + " ".join(saved)
  assert sorted(os.listdir(samples)) == ["0_airplane.png", "1_automobile.png"]
  again = _run(f"--saved_model={run_dir}", "--top_k=1", *saved)
  assert again.returncode == 0, again.stderr[-2000:]
  assert [l.split(": ")[1] for l in again.stdout.splitlines()[1:]] == [
      l.split(": ")[1] for l in lines[1:3]]


@pytest.mark.parametrize("args, message", [
    (["--num_records=0", "--tfrecord=x"], "--num_records must be >= 1"),
    (["--num_records=-1", "--tfrecord=x"], "--num_records must be >= 1"),
    (["missing.jpg"], "Image file 'missing.jpg' does not exist."),
    (["--save_images=out", "x.png"], "--save_images='out' saves the images "
     "of --tfrecord records"),
])
def test_mistakes_are_one_line_last(run_dir, args, message):
  result = _run(f"--saved_model={run_dir / 'export'}", *args)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("predict.py: error: ") and message in last
  assert "Traceback" not in result.stderr
  assert "--request_json" not in result.stderr  # no flag help
