"""CIFAR input for the Keras 3 path without TensorFlow.

The shared CIFAR TFRecords hold `tf.train.Example`s with a JPEG `image` and
an int64 `label`. `read_tfrecord` reads them with the standard library (the
TFRecord framing and the few protobuf fields needed) and Pillow (JPEG), so
the Keras 3 path trains on a machine with JAX or PyTorch and no TensorFlow.
Record checksums are not verified (crc32c is not in the standard library);
lengths are, and a truncated file is refused. Pillow's JPEG decoder and
TensorFlow's round differently: on the shared CIFAR records about 65% of
the pixel values differ, by at most 5 levels of 255 (labels are identical).

`AugmentedImages` is a `keras.utils.PyDataset` with the standard CIFAR
augmentation (4-pixel padded random crops and horizontal flips), seeded.
"""

import io
import os
import struct

import keras
import numpy as np


def _varint(buffer, position):
  result, shift = 0, 0
  while True:
    byte = buffer[position]
    position += 1
    result |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return result, position
    shift += 7


def _fields(buffer):
  """Yields `(field number, wire type, value)` of one protobuf message."""
  position = 0
  while position < len(buffer):
    key, position = _varint(buffer, position)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, position = _varint(buffer, position)
    elif wire == 2:
      length, position = _varint(buffer, position)
      value = buffer[position:position + length]
      position += length
    elif wire == 1:
      value, position = buffer[position:position + 8], position + 8
    elif wire == 5:
      value, position = buffer[position:position + 4], position + 4
    else:
      raise ValueError(f"Unsupported protobuf wire type {wire}.")
    yield number, wire, value


def parse_example(record):
  """The features of a serialized `tf.train.Example`: name -> list of values.

  bytes_list values are `bytes`, int64_list values `int` (float_list is
  not needed here and is refused).
  """
  features = {}
  for number, _, value in _fields(record):
    if number != 1:
      continue
    for entry_number, _, entry in _fields(value):
      if entry_number != 1:
        continue
      name, feature = None, b""
      for field, _, item in _fields(entry):
        if field == 1:
          name = bytes(item).decode("utf-8")
        elif field == 2:
          feature = item
      values = []
      for kind, _, payload in _fields(feature):
        if kind == 1:  # BytesList
          values += [bytes(v) for f, _, v in _fields(payload) if f == 1]
        elif kind == 3:  # Int64List, packed or not
          for f, wire, v in _fields(payload):
            if f != 1:
              continue
            if wire == 0:
              values.append(v if v < 2**63 else v - 2**64)
            else:
              position = 0
              while position < len(v):
                item, position = _varint(v, position)
                values.append(item if item < 2**63 else item - 2**64)
        else:
          raise ValueError(f"Feature {name!r} has an unsupported kind {kind}.")
      features[name] = values
  return features


def records(path):
  """Yields the raw records of a TFRecord file."""
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f"{path!r} is truncated (a record header is cut).")
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        raise ValueError(f"{path!r} is truncated (a record is cut).")
      yield data


def read_tfrecord(path, limit=None):
  """Images and labels of a CIFAR TFRecord file (JPEG `image`, `label`).

  Args:
    path: The `.tfrecord` file.
    limit: Read at most this many records (the files are shuffled, so a
      prefix is roughly class-balanced).

  Returns:
    `(images, labels)`: uint8 [N, H, W, 3] and int64 [N] numpy arrays.

  Raises:
    FileNotFoundError: if `path` does not exist.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No TFRecord file at {path!r}.")
  images, labels = [], []
  for record in records(path):
    if limit is not None and len(images) >= limit:
      break
    example = parse_example(record)
    image = Image.open(io.BytesIO(example["image"][0])).convert("RGB")
    images.append(np.asarray(image, np.uint8))
    labels.append(example["label"][0])
  if not images:
    raise ValueError(f"No records read from {path!r} (limit={limit}).")
  return np.stack(images), np.asarray(labels, np.int64)


def cifar10(data_dir, train_size=None, validation_size=5000, test_size=None):
  """CIFAR-10 splits from `train.tfrecord` and `test.tfrecord` in `data_dir`.

  The validation split is the first `validation_size` training records and
  the training split the `train_size` after them (all the rest by
  default), as the tfmot path's scripts split them.

  Returns:
    A dict with `train`, `validation` and `test`, each `(images, labels)`.
  """
  read = None if train_size is None else train_size + validation_size
  images, labels = read_tfrecord(os.path.join(data_dir, "train.tfrecord"),
                                 limit=read)
  if len(images) <= validation_size:
    raise ValueError(f"validation_size={validation_size} leaves no training "
                     f"images of the {len(images)} read.")
  return {
      "train": (images[validation_size:], labels[validation_size:]),
      "validation": (images[:validation_size], labels[:validation_size]),
      "test": read_tfrecord(os.path.join(data_dir, "test.tfrecord"),
                            limit=test_size),
  }


class AugmentedImages(keras.utils.PyDataset):
  """Shuffled, augmented batches of CIFAR images (float32 pixels 0-255).

  Args:
    images: uint8 [N, H, W, C].
    labels: [N].
    batch_size: Images per batch (the last partial batch is dropped).
    seed: Seed of the shuffling and augmentation; epoch e uses seed + e.
    augment: Random 4-pixel padded crops and horizontal flips.
  """

  def __init__(self, images, labels, batch_size, seed=0, augment=True,
               **kwargs):
    super().__init__(**kwargs)
    if len(images) < batch_size:
      raise ValueError(f"batch_size={batch_size} exceeds the {len(images)} "
                       "images.")
    self.images, self.labels = images, labels
    self.batch_size, self.seed, self.augment = batch_size, seed, augment
    self.epoch = 0
    self._shuffle()

  def _shuffle(self):
    self._rng = np.random.RandomState(self.seed + self.epoch)
    self._order = self._rng.permutation(len(self.images))

  def __len__(self):
    return len(self.images) // self.batch_size

  def __getitem__(self, index):
    chosen = self._order[index * self.batch_size:(index + 1) *
                         self.batch_size]
    batch = self.images[chosen].astype(np.float32)
    if self.augment:
      rng = np.random.RandomState((self.seed + self.epoch) * 100003 + index)
      padded = np.pad(batch, ((0, 0), (4, 4), (4, 4), (0, 0)))
      height, width = batch.shape[1:3]
      for i in range(len(batch)):
        top, left = rng.randint(0, 9, 2)
        batch[i] = padded[i, top:top + height, left:left + width]
        if rng.rand() < 0.5:
          batch[i] = batch[i, :, ::-1]
    return batch, self.labels[chosen]

  def on_epoch_end(self):
    self.epoch += 1
    self._shuffle()
