"""tfsdn.cli: TensorFlow's Python log follows TF_CPP_MIN_LOG_LEVEL, and
usage errors are one line."""

import logging
import os

from absl import logging as absl_logging
import pytest
import tensorflow as tf

from tfsdn import cli


def _record(pathname, level):
  return logging.LogRecord("absl", level, pathname, 1, "message", (), None)


@pytest.fixture
def restore_loggers():
  absl_logger = absl_logging.get_absl_logger()
  filters, level = list(absl_logger.filters), tf.get_logger().level
  yield absl_logger
  absl_logger.filters[:] = filters
  tf.get_logger().setLevel(level)


def test_tensorflow_lines_are_hidden_below_the_level_others_kept(
    restore_loggers, monkeypatch):
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
  cli.quiet_tensorflow_python_log()
  assert tf.get_logger().level == logging.ERROR
  saver = os.path.join(os.path.dirname(tf.__file__), "python", "checkpoint",
                       "functional_saver.py")
  ours = os.path.join("tfsdn", "callbacks.py")
  logger = restore_loggers
  assert not logger.filter(_record(saver, logging.INFO))
  assert not logger.filter(_record(saver, logging.WARNING))
  assert logger.filter(_record(saver, logging.ERROR))
  assert logger.filter(_record(ours, logging.INFO))


@pytest.mark.parametrize("level, hidden", [
    ("0", None), ("1", logging.INFO), ("3", logging.WARNING)])
def test_the_users_level_is_kept(restore_loggers, monkeypatch, level, hidden):
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
  cli.quiet_tensorflow_python_log()
  saver = os.path.join(os.path.dirname(tf.__file__), "saved_model", "save.py")
  for record_level in (logging.INFO, logging.WARNING, logging.ERROR):
    shown = bool(restore_loggers.filter(_record(saver, record_level)))
    assert shown == (hidden is None or record_level > hidden), record_level


def test_error_line_is_one_line_named_after_the_script(monkeypatch):
  monkeypatch.setattr("sys.argv", ["/x/examples/export_model.py"])
  assert cli.error_line("--version=0:\n  must be >= 1") == (
      "export_model.py: error: --version=0: must be >= 1")
