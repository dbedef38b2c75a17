"""What the example scripts share: quiet TensorFlow logs and one-line errors.

A script sets the C++ log level itself, before TensorFlow is first imported
(this module does not import TensorFlow, so the Keras 3 script runs without
it):

```python
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # cli.DEFAULT_TF_LOG_LEVEL
...
from tfsdn import cli

if __name__ == "__main__":
  cli.run(main)
```

`run` then applies the same level to TensorFlow's Python log, and turns a
bad flag or a `UsageError` raised by `main` into one line on stderr,
`SCRIPT: error: MESSAGE`, the last line printed, instead of absl's page of
flag help.
"""

import logging
import os
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

# Hides TensorFlow's C++ INFO, WARNING and ERROR lines, such as "failed call
# to cuInit" on a machine without a GPU (the errors that matter reach Python
# as exceptions). A user who sets TF_CPP_MIN_LOG_LEVEL keeps their choice.
DEFAULT_TF_LOG_LEVEL = "3"

# TF_CPP_MIN_LOG_LEVEL -> the lowest level of TensorFlow's Python log lines
# still shown ("Found untraced functions", "Sharding callback duration" and
# the like are INFO).
_PYTHON_LEVELS = {"1": logging.WARNING, "2": logging.ERROR, "3": logging.ERROR}

class _TensorFlowLogFilter(logging.Filter):
  """Drops records below `level` logged from TensorFlow's or tf_keras' code.

  TensorFlow logs through its own logger and through absl's, which the
  scripts' own messages (and tfsdn's) also use: the source file tells them
  apart.
  """

  def __init__(self, level, modules):
    super().__init__()
    self.level = level
    self.directories = tuple(
        os.path.dirname(module.__file__) + os.sep for module in modules)

  def filter(self, record):
    return (record.levelno >= self.level or
            not record.pathname.startswith(self.directories))


def quiet_tensorflow_python_log():
  """Applies `TF_CPP_MIN_LOG_LEVEL` to TensorFlow's Python log lines too.

  Level 0 (or unset) shows them all, 1 hides INFO, 2 and 3 hide WARNING
  too. Lines logged by other code through absl (tfsdn's, the scripts') are
  untouched.
  """
  level = _PYTHON_LEVELS.get(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
  tf = sys.modules.get("tensorflow")
  if level is None or tf is None:
    return  # TensorFlow not in use (the Keras 3 script on JAX).
  modules = [tf] + [m for m in (sys.modules.get("tf_keras"),) if m]
  tf.get_logger().setLevel(level)
  absl_logging.get_absl_logger().addFilter(
      _TensorFlowLogFilter(level, modules))


def error_line(message):
  """`SCRIPT: error: MESSAGE` on one line, as argparse words it."""
  script = os.path.basename(sys.argv[0]) if sys.argv else "script"
  return f"{script}: error: {' '.join(str(message).split())}"


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(error_line(f"{e} (--helpshort lists the flags)"))


def run(main):
  """`absl.app.run(main)`, with quiet TensorFlow logs and one-line errors.

  A flag that does not parse, a missing required flag, or a `UsageError`
  raised by `main` exits with status 1 after printing one line,
  `SCRIPT: error: MESSAGE`, to stderr. Other exceptions keep their
  traceback: they are bugs, not usage errors.

  Args:
    main: The script's `main(argv)`.
  """

  def main_with_one_line_errors(argv):
    quiet_tensorflow_python_log()
    try:
      return main(argv)
    except app.UsageError as e:
      sys.exit(error_line(e))

  app.run(main_with_one_line_errors, flags_parser=_parse_flags)
