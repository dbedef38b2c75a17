"""The TensorFlow-free TFRecord reader of the Keras 3 path."""

import os

import numpy as np
import pytest

from tfsdn.keras3 import data

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                      "data", "cifar10", "test.tfrecord")


def _write_records(path, images, labels):
  tf = pytest.importorskip("tensorflow")
  with tf.io.TFRecordWriter(str(path)) as writer:
    for image, label in zip(images, labels):
      example = tf.train.Example(features=tf.train.Features(feature={
          "image": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[tf.io.encode_png(image).numpy()])),
          "label": tf.train.Feature(int64_list=tf.train.Int64List(
              value=[label]))}))
      writer.write(example.SerializeToString())


def test_reads_what_tensorflow_wrote(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
  labels = [3, 0, 9, 1234567890123, 2]
  _write_records(tmp_path / "r.tfrecord", images, labels)
  got_images, got_labels = data.read_tfrecord(tmp_path / "r.tfrecord")
  np.testing.assert_array_equal(got_images, images)  # PNG: lossless
  assert got_labels.tolist() == labels
  assert data.read_tfrecord(tmp_path / "r.tfrecord", limit=2)[0].shape == (
      2, 6, 7, 3)


def test_truncated_and_missing_files_are_refused(tmp_path):
  _write_records(tmp_path / "r.tfrecord",
                 np.zeros((2, 4, 4, 3), np.uint8), [1, 2])
  whole = (tmp_path / "r.tfrecord").read_bytes()
  (tmp_path / "cut.tfrecord").write_bytes(whole[:-10])
  with pytest.raises(ValueError, match="truncated"):
    data.read_tfrecord(tmp_path / "cut.tfrecord")
  with pytest.raises(FileNotFoundError, match="nothing.tfrecord"):
    data.read_tfrecord(tmp_path / "nothing.tfrecord")


@pytest.mark.skipif(not os.path.exists(SHARED),
                    reason="the shared CIFAR-10 TFRecords are not beside the "
                    "repository")
def test_labels_and_pixels_agree_with_tensorflow_on_the_shared_cifar():
  tf = pytest.importorskip("tensorflow")
  images, labels = data.read_tfrecord(SHARED, limit=50)
  expected = []
  for record in tf.data.TFRecordDataset(SHARED).take(50):
    example = tf.io.parse_single_example(record, {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64)})
    expected.append((tf.io.decode_jpeg(example["image"], channels=3).numpy(),
                     int(example["label"])))
  assert labels.tolist() == [label for _, label in expected]
  difference = np.abs(images.astype(int) - np.stack(
      [image for image, _ in expected]).astype(int))
  # Pillow's and TensorFlow's JPEG decoders differ by a few levels.
  assert difference.max() <= 8 and difference.mean() < 1.5


def test_augmented_batches_are_seeded_and_shaped():
  images = np.arange(10 * 8 * 8 * 3, dtype=np.uint8).reshape(10, 8, 8, 3)
  labels = np.arange(10)
  first = data.AugmentedImages(images, labels, batch_size=4, seed=3)
  second = data.AugmentedImages(images, labels, batch_size=4, seed=3)
  assert len(first) == 2
  x, y = first[1]
  np.testing.assert_array_equal(x, second[1][0])
  assert x.shape == (4, 8, 8, 3) and x.dtype == np.float32
  assert sorted(y.tolist()) == sorted(set(y.tolist()))
  with pytest.raises(ValueError, match="batch_size=20"):
    data.AugmentedImages(images, labels, batch_size=20)


def test_nothing_read_is_an_error_naming_the_file(tmp_path):
  _write_records(tmp_path / "r.tfrecord", np.zeros((2, 4, 4, 3), np.uint8),
                 [1, 2])
  with pytest.raises(ValueError, match=r"r.tfrecord.*limit=0"):
    data.read_tfrecord(tmp_path / "r.tfrecord", limit=0)
