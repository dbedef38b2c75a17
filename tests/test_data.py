import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfsdn import data


def write_tfrecords(directory, count=20, seed=0):
  """Writes a small CIFAR-like train/test TFRecord pair of JPEG images."""
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for name in ("train.tfrecord", "test.tfrecord"):
    with tf.io.TFRecordWriter(str(directory / name)) as writer:
      for i in range(count):
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        example = tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[tf.io.encode_jpeg(image).numpy()])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(
                value=[i % 10])),
        }))
        writer.write(example.SerializeToString())
  return directory


def test_tfrecord_pipeline_batches_raw_pixels(tmp_path):
  directory = write_tfrecords(tmp_path / "cifar")
  data.check_tfrecord_dir(str(directory))
  name = f"tfrecord:{directory}"
  batches = list(data.make_dataset(name, "test", 8, size=12))
  assert [b[0].shape[0] for b in batches] == [8, 4]
  images, labels = batches[0]
  assert images.dtype == tf.float32 and images.shape[1:] == (32, 32, 3)
  assert float(tf.reduce_max(images)) > 1.0  # raw 0-255, not normalised
  np.testing.assert_array_equal(labels, np.arange(8) % 10)
  assert data.count_examples(name, "train") == 20
  assert data.count_examples(name, "train", size=5) == 5
  train = list(data.make_dataset(name, "train", 4, training=True, size=8))
  assert sum(int(b[0].shape[0]) for b in train) == 8


def test_tfrecord_pipelines_know_their_batch_count(tmp_path):
  name = f"tfrecord:{write_tfrecords(tmp_path / 'cifar')}"  # 20 records
  assert int(data.make_dataset(name, "train", 8, training=True)
             .cardinality()) == 3  # Keras' progress bar shows "1/3"
  assert int(data.make_dataset(name, "test", 4, size=10).cardinality()) == 3
  assert int(data.make_dataset(name, "train", 4, size=50, offset=15)
             .cardinality()) == 2  # 5 records left after the offset


def test_offset_holds_out_the_start_of_a_split(tmp_path):
  name = f"tfrecord:{write_tfrecords(tmp_path / 'cifar')}"
  held_out = np.concatenate([b[1] for b in data.make_dataset(
      name, "train", 4, size=6)])
  rest = np.concatenate([b[1] for b in data.make_dataset(
      name, "train", 4, offset=6, size=10)])
  np.testing.assert_array_equal(held_out, np.arange(6) % 10)
  np.testing.assert_array_equal(rest, np.arange(6, 16) % 10)
  assert data.count_examples(name, "train", offset=6) == 14
  assert data.count_examples(name, "train", size=10, offset=15) == 5
  with pytest.raises(ValueError, match="offset=-1"):
    data.make_dataset(name, "train", 4, offset=-1)


def test_augment_pads_crops_and_keeps_shape():
  image = tf.ones((32, 32, 3), tf.uint8) * 200
  out, label = data.augment(image, 3)
  assert out.shape == (32, 32, 3) and label == 3


def test_tfds_pipeline_on_mock_data():
  with tfds.testing.mock_data(num_examples=10):
    batches = list(data.make_dataset("cifar10", "train", 4, training=True))
  assert sum(int(b[0].shape[0]) for b in batches) == 10
  assert batches[0][0].shape[1:] == (32, 32, 3)
  assert data.num_classes("cifar100") == 100


def test_tfds_failure_points_at_tfrecord(monkeypatch):
  def offline(*args, **kwargs):
    raise ConnectionError("no network")
  monkeypatch.setattr(tfds, "load", offline)
  with pytest.raises(RuntimeError, match="--dataset=tfrecord:DIR"):
    data.load_split("cifar10", "train")


def test_bad_datasets_name_the_value(tmp_path):
  with pytest.raises(ValueError, match="dataset='mnist'"):
    data.parse_dataset_name("mnist")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.check_tfrecord_dir(str(tmp_path / "missing"))
  (write_tfrecords(tmp_path / "half", count=2) / "test.tfrecord").unlink()
  with pytest.raises(FileNotFoundError, match="test.tfrecord"):
    data.check_tfrecord_dir(str(tmp_path / "half"))
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in ("train.tfrecord", "test.tfrecord"):
    (bad / name).write_bytes(b"this is not a tfrecord file at all")
  with pytest.raises(ValueError, match="is not a TFRecord file"):
    data.check_tfrecord_dir(str(bad))
