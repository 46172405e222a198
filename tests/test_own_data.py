"""Users' own data: every cache is keyed by what it was built from, every
file pairing is checked, and every problem is one line (exit 2) before
anything compiles; a workdir without a checkpoint is not a run yet."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import portpicker
import pytest

from attnlab import main as main_lib
from attnlab import metrics as metrics_lib
from attnlab.data import tokenizer as tok_lib
from attnlab.data import translation
from conftest import tiny_overrides
from helpers import ROOT, load_state

SEQ2SEQ = "configs/seq2seq.py:data=folder,runlocal=True"
CHARLM = "configs/charlm.py:runlocal=True"
DE = "der hund sieht ein haus und die katze hat einen baum".split()
EN = "the dog sees a house and the cat has a tree".split()
RU = "собака видит дом и кошка имеет дерево большой маленький".split()


def write_split(folder, lang, split, lines):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f"{lang}.{split}.txt"), "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))


def sentences(words, n, seed):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(words, rng.integers(3, 7))) + "." for _ in range(n)]


def parallel(folder, src_words, tgt_words, src="de", tgt="en", n=200):
  for split, size in (("train", n), ("test", 10)):
    write_split(folder, src, split, sentences(src_words, size, 0))
    write_split(folder, tgt, split, sentences(tgt_words, size, 0))
  return str(folder)


def one_line_error(argv, capsys):
  """Runs the CLI in process; returns its single stderr line (exit 2)."""
  with pytest.raises(SystemExit) as e:
    main_lib.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("error: "), err
  return err


def translate_experiment(tmp_path, folder, workdir, vocab_size=200):
  from configs import seq2seq
  from experiments import translate
  config = seq2seq.get_config("data=folder,runlocal=True")
  config.data.update(folder=folder, data_dir=str(tmp_path / "tfds"), vocab_size=vocab_size)
  return translate.Experiment(config, str(workdir))


# --- 1. the SentencePiece cache --------------------------------------------
def test_same_language_codes_other_text_get_another_tokenizer(tmp_path):
  """Russian under `de` must not reuse the German folder's tokenizer."""
  german = parallel(tmp_path / "german", DE, EN)
  russian = parallel(tmp_path / "russian", RU, EN)
  a = translate_experiment(tmp_path, german, tmp_path / "run_a").tokenizer
  b = translate_experiment(tmp_path, russian, tmp_path / "run_b").tokenizer
  cache = sorted(os.listdir(tmp_path / "tfds" / "attnlab_spm"))
  assert len(cache) == 2, cache  # two models, one per text
  russian_text = " ".join(s for s, _ in translation.folder_pairs(russian, "de", "en", "train"))
  assert tok_lib.UNK not in b.encode(russian_text)
  assert b.decode(b.encode("собака видит дом.")) == "собака видит дом."
  assert tok_lib.UNK in a.encode(russian_text)  # what the old cache key served
  # An edited file is other text too.
  write_split(german, "en", "train", sentences(EN + ["bird"], 200, 1))
  translate_experiment(tmp_path, german, tmp_path / "run_c")
  assert len(os.listdir(tmp_path / "tfds" / "attnlab_spm")) == 3


def test_a_run_keeps_its_own_tokenizer(tmp_path):
  """Resuming or sampling reads the run's copy, not the cache or the data."""
  german = parallel(tmp_path / "german", DE, EN)
  first = translate_experiment(tmp_path, german, tmp_path / "run").tokenizer
  saved = open(tmp_path / "run" / tok_lib.RUN_FILE, "rb").read()
  for name in os.listdir(tmp_path / "tfds" / "attnlab_spm"):
    os.remove(tmp_path / "tfds" / "attnlab_spm" / name)
  write_split(german, "de", "train", sentences(RU, 200, 2))  # the data changed
  again = translate_experiment(tmp_path, german, tmp_path / "run").tokenizer
  assert open(again.path, "rb").read() == saved
  assert again.encode("der hund sieht ein haus.") == first.encode("der hund sieht ein haus.")


def test_processes_share_process_0s_tokenizer(tmp_path):
  """Two processes with their own disks: both end with process 0's model;
  process 1 never trains one."""
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(sentences(DE + EN, 300, 0)))
  script = (
      "import os, sys; from attnlab import sharding; from attnlab.data import tokenizer as t\n"
      "sharding.initialize_distributed()\n"
      "i = int(os.environ['JAX_PROCESS_ID']); base = sys.argv[1]\n"
      "def texts():\n"
      "  assert i == 0, 'only process 0 trains'\n"
      "  return open(os.path.join(base, 'corpus.txt')).read().splitlines()\n"
      "tok = t.for_run(os.path.join(base, f'run{i}'), os.path.join(base, f'cache{i}'),\n"
      "                'x', texts, 100)\n"
      "print('pieces', len(tok))\n")
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      env=dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_PROCESS_ID=str(i),
               JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2"))
      for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  models = [open(tmp_path / f"run{i}" / tok_lib.RUN_FILE, "rb").read() for i in range(2)]
  assert models[0] == models[1]
  assert not os.path.exists(tmp_path / "cache1")


# --- 2. pairing the two sides ----------------------------------------------
def test_unequal_line_counts_are_refused(tmp_path, capsys):
  folder = parallel(tmp_path / "par", DE, EN, src="fr")
  write_split(folder, "en", "train", sentences(EN, 199, 0))  # one line lost
  err = one_line_error(["train", "--config", SEQ2SEQ, "--workdir", str(tmp_path / "w"),
                        f"--config.data.folder={folder}", "--config.data.src_lang=fr"],
                       capsys)
  assert "fr.train.txt has 200 lines" in err and "en.train.txt has 199" in err, err
  assert not os.path.exists(tmp_path / "w" / "config.json")


def test_lines_end_at_newlines_only(tmp_path):
  """U+2028, NEL and form feeds inside a sentence, CRLF line ends and a
  byte-order mark: still line i pairs with line i."""
  folder = tmp_path / "par"
  folder.mkdir()
  (folder / "de.train.txt").write_bytes(
      "\ufeffeins\u2028zwei\r\ndrei\x0cvier\r\nfünf\u0085sechs\r\n".encode("utf-8"))
  (folder / "en.train.txt").write_text("one two\nthree four\nfive six\n")
  pairs = translation.folder_pairs(str(folder), "de", "en", "train")
  assert pairs == [("eins\u2028zwei", "one two"), ("drei\x0cvier", "three four"),
                   ("fünf\u0085sechs", "five six")]


# --- 3, 5. one-line errors for translation data ------------------------------
def test_vocabulary_too_small_names_the_smallest_size(tmp_path, capsys):
  letters = [chr(c) for c in range(0x3b1, 0x3c9)] + [chr(c) for c in range(0x430, 0x450)]
  words = ["".join(np.random.default_rng(i).choice(letters, 5)) for i in range(60)]
  folder = parallel(tmp_path / "par", words, EN)
  err = one_line_error(["train", "--config", SEQ2SEQ, "--workdir", str(tmp_path / "w"),
                        f"--config.data.folder={folder}",
                        f"--config.data.data_dir={tmp_path / 'tfds'}"], capsys)
  assert "config.data.vocab_size: 64 is smaller than" in err, err
  need = int(re.search(r"--config\.data\.vocab_size=(\d+) or more", err)[1])
  assert need > 64
  texts = [x for pair in translation.folder_pairs(folder, "de", "en", "train") for x in pair]
  assert tok_lib.cached(str(tmp_path / "c"), "x", texts, need)  # the smallest works
  with pytest.raises(Exception, match=f"{need - 1} is smaller"):
    tok_lib.cached(str(tmp_path / "c"), "x", texts, need - 1)
  assert not os.path.exists(tmp_path / "w" / "config.json")


def test_missing_files_name_the_language_keys(tmp_path, capsys):
  folder = parallel(tmp_path / "par", DE, EN, src="fr")
  err = one_line_error(["train", "--config", SEQ2SEQ, "--workdir", str(tmp_path / "w"),
                        f"--config.data.folder={folder}"], capsys)
  for words in ("de.train.txt is missing", "data.src_lang='de'", "data.tgt_lang='en'",
                "fr.train.txt", "--config.data.src_lang"):
    assert words in err, (words, err)


# --- 4. sample on runs that are not language models ---------------------------
def test_sample_translates_text_or_says_what_the_run_supports(tmp_path, capsys):
  folder = parallel(tmp_path / "par", DE, EN)
  wd = str(tmp_path / "run")
  main_lib.main(["train", "--config", "configs/wmt.py:ding,runlocal=True", "--workdir", wd,
                 "--config.data.source=folder", f"--config.data.folder={folder}",
                 f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.eval_every=0"])
  capsys.readouterr()
  main_lib.main(["sample", wd, "--text", "der hund sieht ein haus.\\ndie katze."])
  out = capsys.readouterr().out.splitlines()
  assert out[0] == "SRC  der hund sieht ein haus." and out[2] == "SRC  die katze."
  assert out[1].startswith("HYP  ") and out[3].startswith("HYP  ")
  err = one_line_error(["sample", wd, "--prompt", "der"], capsys)
  assert "translation run" in err and "--text" in err
  from configs import bert
  from attnlab import train
  train.write_config(bert.get_config("pretrain,runlocal=True"), str(tmp_path / "bert"))
  err = one_line_error(["sample", str(tmp_path / "bert")], capsys)
  assert "mlm run" in err and "launch.sh eval" in err


# --- 6, 11. prompts: known characters, taken from the data ---------------------
def test_prompts_outside_the_vocabulary_are_refused(tmp_path, text_folder, capsys):
  wd = str(tmp_path / "run")
  main_lib.main(["train", "--config", CHARLM, "--workdir", wd,
                 *tiny_overrides(text_folder, total_steps=3)])
  err = one_line_error(["sample", wd, "--prompt", "ROMEO:"], capsys)
  assert "['R']" in err and "--prompt" in err, err  # make_text has no R
  err = one_line_error(["train", "--config", CHARLM, "--workdir", str(tmp_path / "w2"),
                        *tiny_overrides(text_folder, total_steps=3),
                        "--config.sample.prompt=Größe"], capsys)
  assert "config.sample.prompt" in err and "'ß'" in err and "'ö'" in err, err


def test_sample_prompt_comes_from_the_data_and_sample_writes_no_events(tmp_path, capsys):
  folder = tmp_path / "german"
  for split, n in (("train", 30), ("validation", 10), ("test", 10)):
    lines = sentences("der könig spricht zu seiner tochter über das große reich".split(), n * 20, n)
    (folder / split).mkdir(parents=True)
    (folder / split / "a.txt").write_text("Erster Akt, erste Szene.\n" + "\n".join(lines))
  wd = tmp_path / "run"
  main_lib.main(["train", "--config", CHARLM, "--workdir", str(wd),
                 *tiny_overrides(str(folder), total_steps=3)])
  assert (wd / "samples" / "step_3.txt").read_text().startswith("Erster Akt, erste Szene.\n")
  events = sorted(os.listdir(wd / "tb"))
  capsys.readouterr()
  main_lib.main(["sample", str(wd), "--length", "20"])
  assert capsys.readouterr().out.startswith("Erster Akt, erste Szene.\n")
  assert sorted(os.listdir(wd / "tb")) == events


# --- 7. a workdir without a checkpoint is not a run yet -----------------------
def test_new_config_takes_a_workdir_without_checkpoints(tmp_path, text_folder, capsys):
  wd = tmp_path / "run"
  with pytest.raises(SystemExit) as e:  # diverges before its first save
    main_lib.main(["train", "--config", CHARLM, "--workdir", str(wd),
                   *tiny_overrides(text_folder, total_steps=3, ckpt_every=0, eval_every=0),
                   "--config.optim.lr=3e38", "--config.optim.clip_norm=0.0"])
  assert e.value.code == 1 and os.path.exists(wd / "config.json")
  assert not [d for d in os.listdir(wd / "checkpoints") if d.isdigit()]
  main_lib.main(["train", "--config", CHARLM, "--workdir", str(wd),
                 *tiny_overrides(text_folder, total_steps=3, eval_every=0)])
  assert int(load_state(wd)["step"]) == 3
  assert json.load(open(wd / "config.json"))["optim"]["lr"] == 2e-3
  assert json.load(open(wd / "config.json.prev"))["optim"]["lr"] == 3e38
  assert os.path.exists(wd / "vocab.json.prev") and os.path.exists(wd / "metrics.jsonl.prev")
  rows = metrics_lib.read_jsonl(str(wd / "metrics.jsonl"))
  assert max(r["train/lr"] for r in rows) < 1  # none of the failed attempt's rows


# --- 8. warm-up -----------------------------------------------------------------
def test_short_runs_warm_up_for_at_most_a_quarter(capsys):
  from configs import seq2seq, wmt
  assert wmt.get_config("ding").optim.warmup_steps == 400  # the measured default
  assert wmt.get_config("ding,steps=200").optim.warmup_steps == 50
  assert seq2seq.get_config("steps=100").optim.warmup_steps == 25
  err = one_line_error(["train", "--config", "configs/wmt.py:ding", "--workdir", "w",
                        "--config.total_steps=200"], capsys)
  assert "config.optim.warmup_steps: 400 is not below total_steps=200" in err, err


# --- 9, 10. log lines: no NaN, no impossible utilisation ------------------------
def test_log_lines_have_no_nan_and_mfu_at_most_100(tmp_path, text_folder, capsys):
  main_lib.main(["train", "--config", CHARLM, "--workdir", str(tmp_path / "run"),
                 *tiny_overrides(text_folder, total_steps=4, log_every=1, eval_every=0),
                 "--config.peak_flops=1.0"])  # a peak far below what is achieved
  out = capsys.readouterr().out
  steps = [line for line in out.splitlines() if line.startswith("step ")]
  assert len(steps) == 4 and "nan" not in " ".join(steps).lower()
  assert "compiled in" in steps[0] and "steps/s" not in steps[0]
  mfus = [float(m) for m in re.findall(r"MFU ([\d.]+)%", out)]
  assert len(mfus) == 3 and max(mfus) <= 100.0, mfus
  assert "above the peak" in out


# --- 12. reading a run with plain orbax, as docs/checkpoints.md shows -----------
def test_readme_plain_orbax_snippet_reads_the_params(tmp_path, text_folder):
  wd = str(tmp_path / "run")
  main_lib.main(["train", "--config", CHARLM, "--workdir", wd,
                 *tiny_overrides(text_folder, total_steps=2, eval_every=0)])
  readme = open(os.path.join(ROOT, "docs", "checkpoints.md")).read()
  block = re.search(r"```python\n(# A run's parameters with plain orbax.*?)```", readme, re.S)
  assert block, "README lost its plain-orbax snippet"
  scope = {}
  exec(block[1].replace("runs/ding_rnnsearch", wd), scope)
  expected = load_state(wd)
  import jax
  for a, b in zip(jax.tree.leaves(scope["params"]), jax.tree.leaves(expected["params"])):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert int(scope["step"]) == 2
