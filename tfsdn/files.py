"""Writing files so that a crash never leaves a half-written one."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=""):
  """Yields a temporary path next to `path`; renames it to `path` on success.

  Write the whole file to the yielded path inside the `with` block. If the
  block raises, the temporary file is removed and `path` is left as it was.

  Args:
    path: The final file path; its directory is created if missing.
    suffix: Suffix of the temporary file (some writers pick the format by it).

  Yields:
    The temporary file path to write to.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  handle, tmp = tempfile.mkstemp(suffix=suffix, dir=directory,
                                 prefix=f".{os.path.basename(path)}.")
  os.close(handle)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
