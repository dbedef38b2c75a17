"""CIFAR input pipelines with tf.data: tensorflow_datasets or local TFRecords.

Images stay raw RGB pixels (0-255, float32); normalisation is a layer of the
model. A dataset is named either by its tfds name (`cifar10`, `cifar100`) or
as `tfrecord:DIR`, a directory holding `train.tfrecord` and `test.tfrecord`
whose records carry a JPEG `image` and an int64 `label`.
"""

import os

import tensorflow as tf

TFDS_DATASETS = {"cifar10": 10, "cifar100": 100}
TFRECORD_PREFIX = "tfrecord:"
SPLIT_FILES = {"train": "train.tfrecord", "test": "test.tfrecord"}
_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def parse_dataset_name(dataset):
  """Splits a `--dataset` value into `("tfds", name)` or `("tfrecord", dir)`.

  Raises:
    ValueError: for an unknown dataset name.
  """
  if dataset.startswith(TFRECORD_PREFIX):
    directory = dataset[len(TFRECORD_PREFIX):]
    if not directory:
      raise ValueError(
          f"dataset={dataset!r} names no directory; use tfrecord:DIR.")
    return "tfrecord", directory
  if dataset in TFDS_DATASETS:
    return "tfds", dataset
  raise ValueError(
      f"Unknown dataset={dataset!r}. Use one of {sorted(TFDS_DATASETS)} "
      "(downloaded by tensorflow_datasets) or tfrecord:DIR.")


def _parse_record(record):
  example = tf.io.parse_single_example(record, _FEATURES)
  image = tf.io.decode_jpeg(example["image"], channels=3)
  return image, example["label"]


def check_tfrecord_dir(directory):
  """Checks that `directory` holds readable train/test TFRecord files.

  Reads and decodes the first record of each split, so a missing or
  malformed directory fails here, before any training.

  Raises:
    FileNotFoundError: if the directory or a split file is missing.
    ValueError: if a file does not hold JPEG image + int64 label records.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"TFRecord directory {directory!r} does not exist (from "
        f"--dataset=tfrecord:{directory}).")
  for split, name in SPLIT_FILES.items():
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"TFRecord directory {directory!r} has no {name} for the {split} "
          "split.")
    try:
      for record in tf.data.TFRecordDataset(path).take(1):
        image, _ = _parse_record(record)
        if image.shape.rank != 3:
          raise ValueError(f"image of shape {image.shape}")
        break
      else:
        raise ValueError("no records")
    except (tf.errors.OpError, ValueError) as e:
      raise ValueError(
          f"{path!r} is not a TFRecord file of JPEG 'image' + int64 'label' "
          f"examples: {str(e).splitlines()[0]}") from e


def num_classes(dataset):
  """Classes of a dataset: 10 or 100 for tfds names, 10 for TFRecord dirs."""
  kind, name = parse_dataset_name(dataset)
  return TFDS_DATASETS[name] if kind == "tfds" else 10


def load_split(dataset, split, data_dir=None):
  """The unbatched `(uint8 image, int64 label)` examples of one split.

  Args:
    dataset: `cifar10`, `cifar100` or `tfrecord:DIR`.
    split: `"train"` or `"test"`.
    data_dir: tensorflow_datasets data directory (tfds names only).

  Returns:
    A `tf.data.Dataset`.

  Raises:
    RuntimeError: if tensorflow_datasets cannot load (e.g. no network); the
      message points at `--dataset=tfrecord:DIR`.
  """
  if split not in SPLIT_FILES:
    raise ValueError(f"split must be 'train' or 'test'. Received: {split!r}")
  kind, name = parse_dataset_name(dataset)
  if kind == "tfrecord":
    path = os.path.join(name, SPLIT_FILES[split])
    return tf.data.TFRecordDataset(path).map(
        _parse_record, num_parallel_calls=tf.data.AUTOTUNE)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return tfds.load(name, split=split, data_dir=data_dir, as_supervised=True)
  except ImportError as e:
    raise RuntimeError(
        f"tensorflow_datasets cannot be used here ({type(e).__name__}: {e}); "
        "reinstall it (pip install -e . pulls what it needs) or use local "
        "files with --dataset=tfrecord:DIR (a directory with train.tfrecord "
        "and test.tfrecord).") from e
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(
        f"tensorflow_datasets could not load {name!r} (split {split!r}, "
        f"data_dir={data_dir!r}): {type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}. Without network access, "
        "download the data elsewhere or use local files with "
        "--dataset=tfrecord:DIR (a directory with train.tfrecord and "
        "test.tfrecord).") from e


def augment(image, label):
  """Standard CIFAR augmentation: 4-pixel zero padding, random crop, flip."""
  shape = tf.shape(image)
  padded = tf.image.pad_to_bounding_box(image, 4, 4, shape[0] + 8,
                                        shape[1] + 8)
  image = tf.image.random_crop(padded, shape)
  return tf.image.random_flip_left_right(image), label


def make_dataset(dataset, split, batch_size, training=False, size=None,
                 data_dir=None, seed=0, shuffle_buffer=10_000, offset=0):
  """A batched, prefetched pipeline of `(float32 pixels 0-255, label)`.

  Args:
    dataset: `cifar10`, `cifar100` or `tfrecord:DIR`.
    split: `"train"` or `"test"`.
    batch_size: Examples per batch.
    training: Augment and shuffle (each epoch anew).
    size: Use only the first `size` examples of the split (after `offset`).
    data_dir: tensorflow_datasets data directory.
    seed: Shuffle and augmentation seed.
    shuffle_buffer: Shuffle buffer size.
    offset: Skip this many examples first, e.g. a validation set held out
      from the start of the train split.

  Returns:
    A `tf.data.Dataset` of batches, of known cardinality (the batches per
    pass: TFRecord files are counted once, here).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1. Received: {batch_size!r}")
  if size is not None and size < 1:
    raise ValueError(f"size must be >= 1. Received: size={size!r}")
  if offset < 0:
    raise ValueError(f"offset must be >= 0. Received: offset={offset!r}")
  data = load_split(dataset, split, data_dir)
  if offset:
    data = data.skip(offset)
  if size:
    data = data.take(size)
  if parse_dataset_name(dataset)[0] == "tfrecord":
    # A TFRecord file does not say how many records it holds: count them
    # (about 2 s for 50,000) so that Keras shows "3/16", not "3/Unknown".
    data = data.apply(tf.data.experimental.assert_cardinality(
        count_examples(dataset, split, size, data_dir, offset)))
  if training:
    data = data.cache().shuffle(shuffle_buffer, seed=seed,
                                reshuffle_each_iteration=True)
    data = data.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  data = data.map(lambda image, label: (tf.cast(image, tf.float32), label),
                  num_parallel_calls=tf.data.AUTOTUNE)
  if not training:
    data = data.cache()
  return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def count_examples(dataset, split, size=None, data_dir=None, offset=0):
  """Examples in a split (at most `size` after `offset`), read once."""
  kind, name = parse_dataset_name(dataset)
  if kind == "tfrecord":  # Count records without decoding the images.
    data = tf.data.TFRecordDataset(os.path.join(name, SPLIT_FILES[split]))
  else:
    data = load_split(dataset, split, data_dir)
  if offset:
    data = data.skip(offset)
  if size:
    data = data.take(size)
  cardinality = int(data.cardinality())
  if cardinality >= 0:
    return cardinality
  return int(data.reduce(0, lambda count, _: count + 1))


def representative_images(dataset, count=256, batch_size=32, data_dir=None,
                          split="train"):
  """Image batches to calibrate post-training int8 quantization on.

  Example:

  ```python
  images = tfsdn.data.representative_images("tfrecord:cifar10")
  tfsdn.export_tflite(model, "int8.tflite", quantization="int8",
                      representative_images=images)
  ```

  Args:
    dataset: `cifar10`, `cifar100` or `tfrecord:DIR`.
    count: Images to take (the first of the split, not augmented).
    batch_size: Images per batch.
    data_dir: tensorflow_datasets data directory.
    split: The split to draw from; the training split by default, so the
      test split stays unseen.

  Returns:
    A `tf.data.Dataset` of float32 image batches (raw pixels 0-255).
  """
  return make_dataset(dataset, split, batch_size, size=count,
                      data_dir=data_dir).map(lambda images, labels: images)
