"""Model selection never sees the test split: training evaluates on
validation, and the test split is read once, after the last step (or by
`eval --split test`), for the number a run reports."""
import json
import os

import pytest

from attnlab import main as main_lib
from attnlab import train
from attnlab.data import text as text_lib
from attnlab.data import translation
from conftest import tiny_overrides
from test_bert import fake_plays  # noqa: F401  (fixture)
from test_translate import parallel_folder  # noqa: F401  (fixture)


@pytest.fixture
def reads(monkeypatch):
  """(phase, split) of every read of a split; phase flips to "finish" when
  the trainer starts its final test report."""
  log, phase = [], {"now": "training"}
  for module, name in ((text_lib, "load_text"), (text_lib, "load_documents"),
                       (translation, "load_pairs")):
    def wrapped(data, split, _original=getattr(module, name)):
      log.append((phase["now"], split))
      return _original(data, split)
    monkeypatch.setattr(module, name, wrapped)
  finish = train.Trainer.finish

  def finishing(self, state):
    phase["now"] = "finish"
    return finish(self, state)
  monkeypatch.setattr(train.Trainer, "finish", finishing)
  return log


def check(log, workdir):
  during = {split for phase, split in log if phase == "training"}
  assert "validation" in during and "test" not in during, log
  assert ("finish", "test") in log
  report = json.load(open(os.path.join(workdir, "test.json")))
  assert report["split"] == "test" and any(k.startswith("test/") for k in report)


def test_char_lm_selects_on_validation(tmp_path, text_folder, reads):
  wd = str(tmp_path / "run")
  main_lib.main(["train", "--config", "configs/charlm.py:runlocal=True", "--workdir", wd,
                 *tiny_overrides(text_folder, total_steps=3)])
  check(reads, wd)
  reads.clear()  # `eval` reads validation; only `--split test` reads test
  main_lib.main(["eval", wd])
  assert "validation" in {s for _, s in reads} and "test" not in {s for _, s in reads}
  os.remove(os.path.join(wd, "test.json"))
  main_lib.main(["eval", wd, "--split", "test"])
  assert "test" in {s for _, s in reads} and os.path.exists(os.path.join(wd, "test.json"))


def test_translation_selects_on_validation(tmp_path, parallel_folder, reads):  # noqa: F811
  wd = str(tmp_path / "run")
  main_lib.main(["train", "--config", "configs/seq2seq.py:data=folder,runlocal=True",
                 "--workdir", wd, f"--config.data.folder={parallel_folder}",
                 f"--config.data.data_dir={tmp_path / 'tfds'}"])
  check(reads, wd)
  # No validation files: 4% of the training pairs, never trained on.
  data = json.load(open(os.path.join(wd, "config.json")))["data"]
  import ml_collections
  data = ml_collections.ConfigDict(data)
  train_pairs = set(translation.load_pairs(data, "train"))
  validation = translation.load_pairs(data, "validation")
  assert validation and not train_pairs & set(validation)
  assert len(train_pairs) + len(validation) >= 390  # 400 lines, a few duplicates
  assert json.load(open(os.path.join(wd, "bleu.json")))["split"] == "test"


def test_bert_selects_on_validation(tmp_path, fake_plays, reads):  # noqa: F811
  wd = str(tmp_path / "run")
  main_lib.main(["train", "--config", "configs/bert.py:classify,runlocal=True",
                 "--workdir", wd, *fake_plays])
  check(reads, wd)
