"""tf.distribute strategies for the example scripts, by name.

The names and their meaning follow `tensorflow/models`
(`official/common/distribute_utils.get_distribution_strategy`):

- `off`: no strategy (TensorFlow's default strategy, one device).
- `one_device`: `OneDeviceStrategy` on the first GPU, else the CPU.
- `mirrored`: `MirroredStrategy` over the local GPUs (or the CPU).
- `multi_worker_mirrored`: `MultiWorkerMirroredStrategy`; the cluster and
  this process's task come from the `TF_CONFIG` environment variable, as
  TensorFlow documents.
- `tpu`: `TPUStrategy` on the TPU named by `tpu_address` (untested here).

With several workers only the chief writes a run's artifacts; the others
write to a temporary folder of their own (`WorkerFiles`) and remove it, as
TensorFlow's multi-worker guide recommends.
"""

import os
import shutil
import tempfile

import tensorflow as tf

STRATEGIES = ("off", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def get_strategy(name, tpu_address=None):
  """The `tf.distribute.Strategy` called `name` (see the module docstring).

  Create it first thing in a program: a `MultiWorkerMirroredStrategy` must
  exist before other TensorFlow ops run.

  Raises:
    ValueError: for an unknown name; the message lists the known ones.
  """
  if name == "off":
    return tf.distribute.get_strategy()
  if name == "one_device":
    device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker_mirrored":
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu_address or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"distribution_strategy must be one of {STRATEGIES}. "
                   f"Received: distribution_strategy={name!r}")


def shard_by_data(dataset):
  """`dataset` with DATA auto-sharding: each worker keeps its share of it.

  Works for one TFRecord file as for many (FILE sharding needs at least one
  file per worker); a strategy with one worker ignores it.
  """
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return dataset.with_options(options)


def task(strategy):
  """`(task_type, task_id)` of this process, `(None, None)` on one worker."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(
      strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return None, None
  return resolver.task_type, resolver.task_id


def is_chief(strategy):
  """True for the process that writes a run's artifacts.

  That is the `chief` task, or worker 0 in a cluster without a chief, or
  the only process when there is one worker.
  """
  task_type, task_id = task(strategy)
  if task_type is None:
    return True
  resolver = strategy.cluster_resolver
  return task_type == "chief" or (
      task_type == "worker" and task_id == 0 and
      "chief" not in resolver.cluster_spec().as_dict())


class WorkerFiles:
  """Where this process writes: the run's folder on the chief, else a temp.

  Example:

  ```python
  files = WorkerFiles(strategy, model_dir)
  model.save(files.path("final_model.keras"))  # chief: model_dir/...
  files.cleanup()                               # non-chief: removes its temp
  ```
  """

  def __init__(self, strategy, run_dir):
    self.chief = is_chief(strategy)
    task_type, task_id = task(strategy)
    self.root = run_dir if self.chief else tempfile.mkdtemp(
        prefix=f"tfsdn-{task_type}{task_id}-")

  def path(self, *parts):
    """`os.path.join(root, *parts)`: the chief's run folder or a temp."""
    return os.path.join(self.root, *parts)

  def cleanup(self):
    """Removes a non-chief's temporary folder (nothing on the chief)."""
    if not self.chief:
      shutil.rmtree(self.root, ignore_errors=True)
