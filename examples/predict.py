r"""Classify images with an exported SavedModel (no tfsdn import needed).

  python examples/predict.py --saved_model=runs/quick \
      --tfrecord=../shared/data/cifar10 --num_records=2 --save_images=runs/images
  python examples/predict.py --saved_model=runs/quick/export runs/images/*.png

`--saved_model` takes a version directory (`runs/quick/export/1`), an export
base holding numbered versions (the newest is used, as TF Serving does) or a
training run directory (its `export/`). `--tfrecord` takes a TFRecord file or
a directory holding `test.tfrecord` (as `train_cifar.py --dataset=tfrecord:DIR`).
Images of another size, grey or with an alpha channel are converted, with a
note saying so. Prints the top-k classes per image; `--request_json=FILE`
also writes the body of the equivalent TF Serving REST request
(POST /v1/models/NAME:predict) to FILE.
"""

import os

# Before TensorFlow loads: hide its C++ log lines (such as "failed call to
# cuInit" on a machine without a GPU) unless the user chose a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pylint: disable=g-import-not-at-top,g-bad-import-order
import json
import re
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")
# Images per call of the served function.
_BATCH = 256

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None,
                    "A SavedModel version directory, an export base holding "
                    "numbered versions (the newest is used) or a training run "
                    "directory (its export/).")
flags.DEFINE_string("tfrecord", None,
                    "Classify records of this TFRecord file, or of DIR/"
                    "test.tfrecord for a directory, instead of image files.")
flags.DEFINE_integer("num_records", 4,
                     "Records to take from --tfrecord (>= 1).")
flags.DEFINE_integer("top_k", 3, "Classes to print per image (>= 1).")
flags.DEFINE_string("request_json", None,
                    "Also write the TF Serving REST request body here.")
flags.DEFINE_string("save_images", None,
                    "With --tfrecord: also save the records' images as PNG "
                    "files in this directory (sample images to try "
                    "predict.py IMAGE... with).")
flags.mark_flag_as_required("saved_model")
flags.register_validator("num_records", lambda n: n >= 1,
                         "--num_records must be >= 1: it is how many records "
                         "of --tfrecord to classify")
flags.register_validator("top_k", lambda k: k >= 1, "--top_k must be >= 1")


class UsageError(app.UsageError):
  """A mistake in the command line: printed as one line, no traceback."""


def _is_saved_model(path):
  return os.path.isfile(os.path.join(path, "saved_model.pb"))


def _versions(base):
  return sorted(int(name) for name in os.listdir(base)
                if re.fullmatch(r"\d+", name) and
                _is_saved_model(os.path.join(base, name)))


def find_saved_model(path):
  """The SavedModel directory that `--saved_model=path` means, and a note.

  Args:
    path: A version directory, an export base of numbered versions, or a
      training run directory holding `export/`.

  Returns:
    `(directory, note)`: `note` says which version was picked, or is None
    when `path` is a version directory itself.

  Raises:
    UsageError: if `path` is none of these.
  """
  if os.path.isfile(path):
    raise UsageError(
        f"--saved_model={path!r} is a file; give a SavedModel directory (a "
        "version such as RUN/export/1, the export base, or the run "
        "directory).")
  if not os.path.isdir(path):
    raise UsageError(f"--saved_model={path!r} does not exist.")
  if _is_saved_model(path):
    return path, None
  base, run_dir = path, None
  if not _versions(path) and os.path.isdir(os.path.join(path, "export")):
    base, run_dir = os.path.join(path, "export"), path
  versions = _versions(base)
  if not versions:
    raise UsageError(
        f"--saved_model={path!r} holds no SavedModel: neither a "
        "saved_model.pb, nor numbered version directories, nor a run's "
        "export/. Give a version directory such as runs/quick/export/1.")
  chosen = os.path.join(base, str(versions[-1]))
  where = f"{base} (the run directory's export/)" if run_dir else base
  return chosen, (f"Using {chosen}: the newest of {len(versions)} version(s) "
                  f"in {where}, as TF Serving does.")


def find_tfrecord(path):
  """`path` itself, or `path/test.tfrecord` for a directory.

  Raises:
    UsageError: if there is no such file.
  """
  if os.path.isdir(path):
    candidate = os.path.join(path, "test.tfrecord")
    if not os.path.isfile(candidate):
      raise UsageError(
          f"--tfrecord={path!r} is a directory without test.tfrecord; give "
          "a TFRecord file or a directory holding test.tfrecord.")
    return candidate
  if not os.path.isfile(path):
    raise UsageError(f"--tfrecord={path!r} does not exist.")
  return path


def read_images(paths, size):
  """Decodes image files into float32 pixels of `size`, RGB.

  Args:
    paths: Image files (JPEG, PNG, GIF or BMP).
    size: `(height, width)` the model takes.

  Returns:
    `(images [n, height, width, 3], names, notes)`: `notes` says how each
    converted image was converted.

  Raises:
    UsageError: for a missing file or one that is not an image.
  """
  images, notes = [], []
  for path in paths:
    if not os.path.isfile(path):
      raise UsageError(f"Image file {path!r} does not exist.")
    try:
      image = tf.io.decode_image(tf.io.read_file(path),
                                 expand_animations=False)
    except tf.errors.InvalidArgumentError as e:
      raise UsageError(
          f"{path!r} is not an image TensorFlow can decode (JPEG, PNG, GIF "
          "or BMP).") from e
    height, width, channels = image.shape
    changes = []
    if channels != 3:
      kind = {1: "grey", 2: "grey with alpha", 4: "RGBA"}.get(
          channels, f"{channels}-channel")
      changes.append(f"{kind} converted to RGB" +
                     (" (alpha dropped)" if channels in (2, 4) else ""))
      image = image[..., :1 if channels < 3 else 3]
      if channels < 3:
        image = tf.image.grayscale_to_rgb(image)
    image = tf.cast(image, tf.float32)
    if (height, width) != tuple(size):
      kept = height * size[1] == width * size[0]
      changes.append(f"resized from {height}x{width} to "
                     f"{size[0]}x{size[1]}" +
                     ("" if kept else " (aspect ratio not kept)"))
      image = tf.image.resize(image, size)
    if changes:
      notes.append(f"Note: {path}: {'; '.join(changes)}.")
    images.append(image.numpy())
  return np.stack(images), list(paths), notes


def read_records(path, count, class_names):
  """The first `count` records of a CIFAR TFRecord file, named by label.

  Raises:
    UsageError: if the file does not hold JPEG `image` + int64 `label`
      records.
  """
  features = {"image": tf.io.FixedLenFeature([], tf.string),
              "label": tf.io.FixedLenFeature([], tf.int64)}
  images, names, labels = [], [], []
  try:
    for i, record in enumerate(tf.data.TFRecordDataset(path).take(count)):
      example = tf.io.parse_single_example(record, features)
      images.append(tf.cast(tf.io.decode_jpeg(example["image"], channels=3),
                            tf.float32).numpy())
      label = int(example["label"])
      labels.append(label)
      name = (f", {class_names[label]}" if 0 <= label < len(class_names)
              else "")
      names.append(f"{path}#{i} (label {label}{name})")
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    raise UsageError(
        f"--tfrecord={path!r} is not a TFRecord file of JPEG 'image' + int64 "
        f"'label' records: {str(e).splitlines()[0]}") from e
  if not images:
    raise UsageError(f"--tfrecord={path!r} holds no records.")
  return np.stack(images), names, labels


def _write_atomically(path, data):
  """Writes bytes to `path` through a temporary file in its directory and a
  rename, with the permissions the user's umask gives a new file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(handle, "wb") as f:
      f.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def save_images(directory, images, labels, class_names):
  """Saves images as `directory/INDEX_CLASS.png`; returns the paths."""
  paths = []
  for i, (image, label) in enumerate(zip(images, labels)):
    name = class_names[label] if 0 <= label < len(class_names) else str(label)
    path = os.path.join(directory, f"{i}_{name}.png")
    _write_atomically(path, tf.io.encode_png(
        tf.cast(np.clip(np.round(image), 0, 255), tf.uint8)).numpy())
    paths.append(path)
  return paths


def load_serving_function(directory):
  """The `serving_default` signature of the SavedModel in `directory`."""
  loaded = tf.saved_model.load(directory)
  serve = loaded.signatures.get("serving_default")
  if serve is None or "images" not in serve.structured_input_signature[1]:
    raise UsageError(
        f"The SavedModel {directory!r} has no serving_default signature "
        "taking 'images'; export it with examples/export_model.py.")
  return serve


def main(argv):
  paths = argv[1:]
  if not paths and not FLAGS.tfrecord:
    raise UsageError("Give image files or --tfrecord.")
  if paths and FLAGS.tfrecord:
    raise UsageError("Give image files or --tfrecord, not both.")
  if FLAGS.save_images and not FLAGS.tfrecord:
    raise UsageError(f"--save_images={FLAGS.save_images!r} saves the images "
                     "of --tfrecord records; give --tfrecord too.")
  if FLAGS.save_images and os.path.isfile(FLAGS.save_images):
    raise UsageError(f"--save_images={FLAGS.save_images!r} is a file, not a "
                     "directory.")
  directory, note = find_saved_model(FLAGS.saved_model)
  tfrecord = find_tfrecord(FLAGS.tfrecord) if FLAGS.tfrecord else None
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:  # Before loading the model, which takes seconds.
    raise UsageError(f"Image file {missing[0]!r} does not exist.")
  if note:
    print(note)
  serve = load_serving_function(directory)
  size = serve.structured_input_signature[1]["images"].shape[1:3]
  classes = int(serve.structured_outputs["probabilities"].shape[-1])
  class_names = (CIFAR10_CLASSES if classes == 10 else
                 [str(i) for i in range(classes)])
  if tfrecord:
    images, names, labels = read_records(tfrecord, FLAGS.num_records,
                                         class_names)
  else:
    images, names, notes = read_images(paths, size)
    for line in notes:
      print(line)
  probabilities = np.concatenate([
      serve(images=tf.constant(images[i:i + _BATCH]))["probabilities"].numpy()
      for i in range(0, len(images), _BATCH)])
  for name, probs in zip(names, probabilities):
    top = np.argsort(-probs)[:FLAGS.top_k]
    print(name + ": " + ", ".join(f"{class_names[i]} {probs[i]:.3f}"
                                  for i in top))
  if tfrecord and FLAGS.save_images:
    saved = save_images(FLAGS.save_images, images, labels, class_names)
    print(f"Images saved: {' '.join(saved)}")
  if FLAGS.request_json:
    body = {"signature_name": "serving_default",
            "instances": np.round(images, 1).tolist()}
    _write_atomically(FLAGS.request_json, json.dumps(body).encode())
    print(f"TF Serving REST request body (POST /v1/models/NAME:predict) "
          f"written to {FLAGS.request_json}")


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(_error_line(f"{e} (--helpshort lists the flags)"))


def _error_line(message):
  return f"predict.py: error: {' '.join(str(message).split())}"


def _main_with_one_line_errors(argv):
  # As tfsdn.cli.run does, without importing tfsdn: TensorFlow's Python log
  # follows TF_CPP_MIN_LOG_LEVEL, and a usage error is one line, the last.
  if os.environ.get("TF_CPP_MIN_LOG_LEVEL") in ("2", "3"):
    tf.get_logger().setLevel("ERROR")
  try:
    return main(argv)
  except app.UsageError as e:
    sys.exit(_error_line(e))


if __name__ == "__main__":
  app.run(_main_with_one_line_errors, flags_parser=_parse_flags)
