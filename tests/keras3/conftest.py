"""Keras 3 tests: they run on the backend KERAS_BACKEND names.

The main pytest run uses Keras 3's default backend (TensorFlow);
`tests/test_keras3_backends.py` runs this folder again under JAX, in its own
process, as Keras' own CI runs one backend per process.
"""

import keras
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _fresh_keras3_state():
  keras.backend.clear_session()
  keras.utils.set_random_seed(0)
  yield


@pytest.fixture
def pixels():
  return np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype(
      "float32")
