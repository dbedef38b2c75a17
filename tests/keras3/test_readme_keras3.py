"""README.md's Keras 3 snippet runs as printed, on this process's backend."""

import os
import re

from tests.test_data import write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SIZES = ('data, epochs, train_size, batch_size = "../shared/data/cifar10", '
         '2, 1024, 64')


def _snippet():
  with open(os.path.join(ROOT, "README.md")) as f:
    section = f.read().split("\n## Keras 3 (any backend)\n", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_keras3_snippet_runs(tmp_path, monkeypatch, capsys):
  snippet = _snippet()
  assert snippet.count(SIZES) == 1, "the sizes line of the README changed"
  records = write_tfrecords(tmp_path / "cifar", count=32)
  snippet = snippet.replace(
      SIZES, f'data, epochs, train_size, batch_size = "{records}", 2, 24, 8')
  monkeypatch.chdir(tmp_path)
  exec(compile(snippet, "README.md (Keras 3)", "exec"), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out.strip().splitlines()
  assert printed[-2].startswith("test accuracy ")
  assert printed[-1].endswith(os.path.join("runs", "keras3", "export", "1"))
  assert (tmp_path / "runs" / "keras3" / "export" / "1" /
          "saved_model.pb").exists()
  assert (tmp_path / "runs" / "keras3" / "compact.keras").exists()


def test_make_prunable_snippet_runs_as_printed(capsys):
  with open(os.path.join(ROOT, "README.md")) as f:
    section = f.read().split("\n## Bring your own model\n", 1)[1]
  snippets = re.findall(r"```python\n(.*?)```", section.split("\n## ")[0],
                        re.DOTALL)
  snippet = next(s for s in snippets if "tfsdn.keras3" in s)
  namespace = {}
  exec(compile(snippet, "README.md (Keras 3 make_prunable)", "exec"),  # pylint: disable=exec-used
       namespace)
  assert capsys.readouterr().out.startswith(
      "119 chains converted to PrunableConcatConv, 2 left alone.")
  sdn = namespace["sdn"]
  assert len(sdn.prunable_layers(namespace["model"])) == 119
  assert isinstance(namespace["pruning"], sdn.Pruning)
