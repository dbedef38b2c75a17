"""Test set-up: two logical CPU devices, so MirroredStrategy has 2 replicas."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
  from tfsdn.compat import keras  # pylint: disable=g-import-not-at-top
  keras.backend.clear_session()
  keras.utils.set_random_seed(0)
  yield
  keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def images():
  rng = np.random.default_rng(1)
  return rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
