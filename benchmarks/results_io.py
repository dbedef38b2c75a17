"""How the evidence runners write results, shared by both paths (no TF).

`evidence.py` (tfmot) and `evidence_keras3.py` (Keras 3) write the same
files, which `evidence_table.py` reads: OUTPUT_DIR/config.json (the flags
every result was made with), labels.json, and per (arm, seed) ARM.json and
ARM.keras under seedS/.
"""

import base64
import glob
import hashlib
import json
import os
import platform
import subprocess
import time

import numpy as np

from tfsdn import files


class ConfigMismatch(ValueError):
  """OUTPUT_DIR holds results made with other flags."""


def encode(values):
  """Class indices (< 256) as base64 text."""
  return base64.b64encode(np.asarray(values, np.uint8).tobytes()).decode()


def decode(text):
  return np.frombuffer(base64.b64decode(text), np.uint8)


def digest(config):
  return hashlib.sha256(json.dumps(config, sort_keys=True).encode()
                        ).hexdigest()


def machine():
  """The CPU a result was computed on: runs pair bit for bit only on one.

  oneDNN and XNNPACK pick kernels by CPU, so the same seed and flags give
  other weights on another CPU (a trunk is bit-identical only on the same
  kind of machine).
  """
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
  except OSError:
    pass
  return {"cpu": model, "cpus": os.cpu_count()}


def code_version(path=__file__):
  """The git commit of the code at `path`, so a result names what made it.

  Kept out of the run config (and so out of its digest and of the trunk's
  cache key): folders made before this field stay valid, and a restart from
  a later commit is allowed, but each result records the commit it ran from.
  A runner pinned in a worktree (`git worktree add --detach DIR COMMIT`)
  keeps later library changes out of its arms; `tfsdn` is where the imported
  library lives, which must be inside that worktree for the pin to hold.

  Returns:
    {"commit": hex or None, "dirty": whether tracked files differ from it
    (None if unknown), "tfsdn": the imported tfsdn package's folder}.
  """
  directory = os.path.dirname(os.path.abspath(path))

  def git(*args):
    return subprocess.run(
        ["git", "--no-optional-locks", "-C", directory, *args], check=True,
        capture_output=True, text=True).stdout.strip()

  try:
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.CalledProcessError):
    commit, dirty = None, None
  return {"commit": commit, "dirty": dirty,
          "tfsdn": os.path.dirname(os.path.abspath(files.__file__))}


def prepare_output_dir(output_dir, config):
  """Creates `output_dir`, or checks that its results used `config`.

  Raises:
    ConfigMismatch: naming the flags that differ (previous, now).
  """
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    changed = {k: (previous.get(k), v) for k, v in config.items()
               if previous.get(k) != v}
    if changed:
      raise ConfigMismatch(
          f"--output_dir={output_dir!r} holds results made with other "
          f"flags (previous, now): {changed}. Move them to a folder of their "
          "own or use a new --output_dir.")
  else:
    files.write_json(path, config)


def save_result(result, compact, directory, arm_name, pruned=None):
  """Writes ARM.keras, ARM.pruned.keras and ARM.json; returns their paths.

  Args:
    result: The arm's result dict (gets `model_path`, `pruned_model_path`).
    compact: The compact model (stock layers).
    directory: The seed's folder.
    arm_name: The arm's name.
    pruned: The pruned model before the strip (PrunableConcatConv layers,
      tfmot wrappers removed), or None for an arm that prunes nothing: kept so
      that a later strip (another target, a better planner) needs no
      retraining. Written before ARM.json, so a result is never listed
      without its models.
  """
  os.makedirs(directory, exist_ok=True)
  written = []
  if pruned is not None:
    pruned_path = os.path.join(directory, f"{arm_name}.pruned.keras")
    with files.atomic_path(pruned_path, suffix=".keras") as tmp:
      pruned.save(tmp)
    result["pruned_model_path"] = pruned_path
    written.append(pruned_path)
  model_path = os.path.join(directory, f"{arm_name}.keras")
  with files.atomic_path(model_path, suffix=".keras") as tmp:
    compact.save(tmp)
  result["model_path"] = model_path
  path = os.path.join(directory, f"{arm_name}.json")
  files.write_json(path, result)
  return [path, model_path] + written


def load(results_dir):
  """`(config, labels, {arm: {seed: result}})` of an OUTPUT_DIR."""
  with open(os.path.join(results_dir, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(results_dir, "labels.json")) as f:
    labels = {k: decode(v) for k, v in json.load(f).items()}
  results = {}
  for path in sorted(glob.glob(os.path.join(results_dir, "seed*", "*.json"))):
    with open(path) as f:
      result = json.load(f)
    results.setdefault(result["arm"], {})[result["seed"]] = result
  return config, labels, results


def git_commit(paths, message, tries=10):
  """Commits `paths` (only them) in the working directory's repository.

  A long run commits into a checkout someone may be committing in too: a
  held index lock is waited for (`tries` times, 3 s apart) rather than
  ending a run whose results are already written.
  """
  for attempt in range(tries):
    add = subprocess.run(["git", "add", "--", *paths], capture_output=True,
                         text=True)
    commit = add if add.returncode else subprocess.run(
        ["git", "commit", "-q", "-m", message, "--", *paths],
        capture_output=True, text=True)
    if not commit.returncode:
      return
    if "index.lock" not in commit.stderr or attempt == tries - 1:
      raise subprocess.CalledProcessError(commit.returncode, commit.args,
                                          commit.stdout, commit.stderr)
    time.sleep(3)
