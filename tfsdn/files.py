"""Writing files so that a crash never leaves a half-written one.

Everything is written to a temporary path next to its destination and then
renamed into place. Temporary files and folders are created owner-only
(`mkstemp`, `mkdtemp`); before the rename they get the permissions a plain
`open()` or `os.makedirs()` would have given them under the user's umask, so
another user (a TF Serving process) can read what tfsdn writes.
"""

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile


def current_umask():
  """The process umask, read without changing it where the OS allows."""
  try:
    with open("/proc/self/status") as status:
      for line in status:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)  # No /proc: read it by setting it, then restore.
  os.umask(mask)
  return mask


def apply_umask(path):
  """Gives `path` (and everything under it) the umask's default permissions.

  Files get 0o666 & ~umask, folders 0o777 & ~umask, as if created by
  `open()` and `os.makedirs()`.

  Args:
    path: A file or a folder.
  """
  umask = current_umask()
  if not os.path.isdir(path):
    os.chmod(path, 0o666 & ~umask)
    return
  for root, dirs, files in os.walk(path):
    os.chmod(root, 0o777 & ~umask)
    for name in dirs:
      os.chmod(os.path.join(root, name), 0o777 & ~umask)
    for name in files:
      os.chmod(os.path.join(root, name), 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(path, suffix=""):
  """Yields a temporary path next to `path`; renames it to `path` on success.

  Write the whole file to the yielded path inside the `with` block. If the
  block raises, the temporary file is removed and `path` is left as it was.
  The file ends with the permissions the umask gives a new file.

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
    apply_umask(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path, value, indent=2):
  """Writes `value` as JSON (sorted keys) through `atomic_path`."""
  with atomic_path(path, suffix=".json") as tmp:
    with open(tmp, "w") as f:
      json.dump(value, f, indent=indent, sort_keys=True)
      f.write("\n")


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a, b):
  """Swaps two existing paths atomically (Linux renameat2).

  Returns:
    True on success, False where the system does not support it.
  """
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd = -100
  result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
                     _RENAME_EXCHANGE)
  if result == 0:
    return True
  code = ctypes.get_errno()
  if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
    return False
  raise OSError(code, os.strerror(code), b)


def publish_directory(tmp, final, overwrite=False):
  """Moves the finished folder `tmp` to `final` in one step.

  Args:
    tmp: A complete folder next to `final` (same file system).
    final: Its destination.
    overwrite: Replace an existing `final`. On Linux the two are swapped
      atomically (`renameat2(RENAME_EXCHANGE)`), so `final` never goes
      missing; elsewhere it is moved aside and replaced.

  Raises:
    FileExistsError: if `final` exists (also when another process created it
      first) and `overwrite` is False.
  """
  apply_umask(tmp)
  if not overwrite or not os.path.exists(final):
    try:
      # rename() replaces an empty folder: create-if-absent needs a check
      # that a concurrent writer cannot slip between, so refuse any folder.
      if os.path.exists(final):
        raise FileExistsError(errno.EEXIST, "exists", final)
      os.rename(tmp, final)
      return
    except OSError as e:
      if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not isinstance(
          e, FileExistsError):
        raise
      if not overwrite:
        raise FileExistsError(errno.EEXIST, "exists", final) from e
  if _exchange(tmp, final):
    shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old version.
    return
  trash = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(final))
  os.rename(final, os.path.join(trash, "old"))
  os.rename(tmp, final)
  shutil.rmtree(trash, ignore_errors=True)
