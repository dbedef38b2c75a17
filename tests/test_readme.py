"""README.md's library snippet runs as printed, and its test command is the
one `.ci/run` runs."""

import os
import re

from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The snippet's one line of sizes, replaced by smaller ones here.
SIZES = ('data, epochs, train_size, batch_size = '
         '"tfrecord:../shared/data/cifar10", 2, 1024, 64')


def _readme():
  with open(os.path.join(ROOT, "README.md")) as f:
    return f.read()


def _library_snippet():
  section = _readme().split("\n## Using the library\n", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_library_snippet_runs(tmp_path, monkeypatch, capsys):
  snippet = _library_snippet()
  assert snippet.count(SIZES) == 1, "the sizes line of the README changed"
  records = write_tfrecords(tmp_path / "cifar", count=32)
  snippet = snippet.replace(
      SIZES, f'data, epochs, train_size, batch_size = "tfrecord:{records}", '
      "2, 32, 8")
  monkeypatch.chdir(tmp_path)
  exec(compile(snippet, "README.md (Using the library)", "exec"), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert "| MACs per image |" in printed
  assert printed.strip().endswith(os.path.join("runs", "library", "export",
                                               "1"))
  assert (tmp_path / "runs" / "library" / "export" / "1" /
          "saved_model.pb").exists()
  assert (tmp_path / "runs" / "library" / "connectivity.png").exists()


def test_readme_test_command_is_the_ci_command():
  readme = re.findall(r"^python -m pytest .*$", _readme(), re.MULTILINE)
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = re.findall(r"^python -m pytest .*$", f.read(), re.MULTILINE)
  assert readme == ci and len(ci) == 1
  assert " -q " not in ci[0]  # progress per test, not minutes of silence


def test_make_prunable_snippet_runs_as_printed(capsys):
  section = _readme().split("\n## Bring your own model\n", 1)[1]
  snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
  namespace = {}
  exec(compile(snippet, "README.md (make_prunable)", "exec"), namespace)  # pylint: disable=exec-used
  assert "conv2_block1_1_conv" in capsys.readouterr().out  # The plan.
  pruned = namespace["pruned"]
  assert len(namespace["tfsdn"].prunable_layers(pruned)) == 119
