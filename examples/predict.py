r"""Classify images with an exported SavedModel (no tfsdn import needed).

  python examples/predict.py --saved_model=runs/quick/export/1 cat.jpg ship.png
  python examples/predict.py --saved_model=runs/quick/export/1 \
      --tfrecord=../shared/data/cifar10/test.tfrecord --num_records=4

Prints the top-k classes per image and the JSON body of the equivalent
TF Serving REST request (POST /v1/models/NAME:predict).
"""

import json

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "An exported version directory.")
flags.DEFINE_string("tfrecord", None, "Classify records of this file instead.")
flags.DEFINE_integer("num_records", 4, "Records to take from --tfrecord.")
flags.DEFINE_integer("top_k", 3, "Classes to print per image.")
flags.DEFINE_string("request_json", None,
                    "Write the REST request body here instead of printing it.")
flags.mark_flag_as_required("saved_model")


def read_images(paths, size):
  images = []
  for path in paths:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                               expand_animations=False)
    images.append(tf.image.resize(tf.cast(image, tf.float32), size).numpy()
                  if image.shape[:2] != tuple(size) else
                  tf.cast(image, tf.float32).numpy())
  return np.stack(images), list(paths)


def read_records(path, count):
  features = {"image": tf.io.FixedLenFeature([], tf.string),
              "label": tf.io.FixedLenFeature([], tf.int64)}
  images, names = [], []
  for i, record in enumerate(tf.data.TFRecordDataset(path).take(count)):
    example = tf.io.parse_single_example(record, features)
    images.append(tf.cast(tf.io.decode_jpeg(example["image"], channels=3),
                          tf.float32).numpy())
    names.append(f"{path}#{i} (label {int(example['label'])})")
  return np.stack(images), names


def main(argv):
  paths = argv[1:]
  if not paths and not FLAGS.tfrecord:
    raise app.UsageError("Give image files or --tfrecord.")
  serve = tf.saved_model.load(FLAGS.saved_model).signatures["serving_default"]
  size = serve.structured_input_signature[1]["images"].shape[1:3]
  if FLAGS.tfrecord:
    images, names = read_records(FLAGS.tfrecord, FLAGS.num_records)
  else:
    images, names = read_images(paths, size)
  probabilities = serve(images=tf.constant(images))["probabilities"].numpy()
  classes = (CIFAR10_CLASSES if probabilities.shape[1] == 10 else
             [str(i) for i in range(probabilities.shape[1])])
  for name, probs in zip(names, probabilities):
    top = np.argsort(-probs)[:FLAGS.top_k]
    print(name + ": " + ", ".join(f"{classes[i]} {probs[i]:.3f}" for i in top))
  body = json.dumps({"signature_name": "serving_default",
                     "instances": np.round(images, 1).tolist()})
  if FLAGS.request_json:
    with open(FLAGS.request_json, "w") as f:
      f.write(body)
    print(f"REST request body written to {FLAGS.request_json}")
  else:
    print("REST request body (POST /v1/models/<name>:predict):")
    print(body)


if __name__ == "__main__":
  app.run(main)
