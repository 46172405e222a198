"""Translation data (Ding, Bible parsing; disjoint splits) and the
translate experiment end to end on a tiny parallel folder."""
import os
import struct
import zlib

import numpy as np
import pytest

from attnlab import main as main_lib
from attnlab import metrics as metrics_lib
from attnlab.data import translation
from helpers import load_state

DE = "der die das hund katze haus baum sieht hat ein gross klein".split()
EN = "the the the dog cat house tree sees has a big small".split()


@pytest.fixture
def parallel_folder(tmp_path):
  rng = np.random.default_rng(0)
  d = tmp_path / "par"
  d.mkdir()
  for split, n in (("train", 400), ("test", 20)):
    de, en = [], []
    for _ in range(n):
      idx = rng.integers(0, len(DE), rng.integers(3, 7))
      de.append(" ".join(DE[i] for i in idx) + ".")
      en.append(" ".join(EN[i] for i in idx) + ".")
    (d / f"de.{split}.txt").write_text("\n".join(de) + "\n")
    (d / f"en.{split}.txt").write_text("\n".join(en) + "\n")
  return str(d)


@pytest.mark.parametrize("model", ["rnnsearch", "rnnencdec", "luong", "transformer"])
def test_translate_smoke(tmp_path, parallel_folder, model):
  wd = tmp_path / model
  config = (f"configs/seq2seq.py:model={model},data=folder,runlocal=True"
            if model != "transformer" else "configs/wmt.py:ding,runlocal=True")
  main_lib.main(["train", "--config", config, "--workdir", str(wd),
                 "--config.data.source=folder", f"--config.data.folder={parallel_folder}",
                 f"--config.data.data_dir={tmp_path / 'tfds'}"])
  assert int(load_state(wd)["step"]) == 4
  rows = metrics_lib.read_jsonl(str(wd / "metrics.jsonl"))
  evals = [r for r in rows if "eval/bleu" in r]
  assert evals and all(np.isfinite(r["eval/loss"]) for r in evals)
  samples = (wd / "samples" / "step_4.txt").read_text()
  assert "nrefs:1|case:mixed" in samples and "SRC  " in samples
  assert os.path.getsize(wd / "plots" / "alignment_0.png") > 1000


def test_ding_lines_align_sub_entries_and_clean_tags():
  raw = "\n".join([
      "# comment :: ignored",
      "Aal {m} (auf der Speisekarte) [cook.] | Aal blau :: Eel (on a menu) | Eel au bleu",
      "Haus {n}; Gebäude {n} | Häuser {pl} :: house; building",  # 2 vs 1: skipped
      "Würden Sie mir einen Gefallen tun? :: Will you do me a favor?",
  ])
  pairs = list(translation.ding_pairs(raw))
  assert pairs == [("Aal", "Eel", False), ("Aal blau", "Eel au bleu", False),
                   ("Würden Sie mir einen Gefallen tun?", "Will you do me a favor?", True)]


def test_splits_are_disjoint_from_training_text():
  pairs = [(f"satz {i}", f"sentence {i if i >= 300 else i % 50}")
           for i in range(2000)]
  splits, report = translation.disjoint_splits(pairs, extra_train=[("satz 7", "x")])
  train_text = {s for p in splits["train"] for s in p} | {"satz 7", "x"}
  for name in ("validation", "test"):
    assert splits[name]
    for s, t in splits[name]:
      assert s not in train_text and t not in train_text
  assert report["test"] > 0  # targets repeat, so some test pairs were dropped


def _ztext(verses):
  """A tiny SWORD zText testament: two zlib blocks of verses."""
  blocks, bzv = [b"", b""], b""
  for i, v in enumerate(verses):
    b = i % 2
    data = v.encode()
    bzv += struct.pack("<IIH", b, len(blocks[b]), len(data))
    blocks[b] += data
  bzs, bzz = b"", b""
  for b in blocks:
    comp = zlib.compress(b)
    bzs += struct.pack("<III", len(bzz), len(comp), len(b))
    bzz += comp
  return {"bzs": bzs, "bzv": bzv, "bzz": bzz}


def test_sword_ztext_reader_and_osis_cleaning():
  ot = _ztext(['<title>Genesis</title>In the beginning <note n="a">a note</note>God.',
               "And the earth &amp; sea."])
  nt = _ztext(["", "Jesus wept."])
  files = {f"ot.{k}": v for k, v in ot.items()} | {f"nt.{k}": v for k, v in nt.items()}
  verses = translation.sword_verses(files.__getitem__)
  assert verses == ["In the beginning God.", "And the earth & sea.", "", "Jesus wept."]


def test_translate_keeps_order_and_whole_long_sentences(tmp_path, parallel_folder,
                                                        monkeypatch):
  """Batched, length-sorted translation on 8 devices == one sentence at a
  time == on one device, for a source far longer than the training max_len
  (it must not be truncated)."""
  import jax
  from experiments import translate
  config, _ = main_lib.parse_config([
      "--config", "configs/seq2seq.py:data=folder,runlocal=True",
      f"--config.data.folder={parallel_folder}",
      f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.decode.batch_tokens=64"])
  exp = translate.Experiment(config, str(tmp_path / "wd"))
  params = exp.init(jax.random.PRNGKey(1), 1)["params"]
  long = " ".join(DE * 3)
  assert len(exp.tokenizer.encode(long)) > 2 * config.data.max_len
  sentences = [long, "der hund.", "die katze sieht ein haus.", "das haus."]
  together = exp.translate(params, sentences)
  alone = [exp.translate(params, [s])[0] for s in sentences]
  assert together == alone
  # Decoded on each of the 8 devices' own rows == on one device.
  from attnlab import sharding
  one = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  assert exp.translate(params, sentences, one) == together
  # The beam search is fed the whole long source, not its first max_len ids.
  from attnlab.evals import sharded
  seen, gather = [], sharded.gather
  monkeypatch.setattr(sharded, "gather", lambda f, p, batch: seen.append(
      np.asarray(batch["src"])) or gather(f, p, batch))
  exp.translate(params, [long])
  ids = exp.tokenizer.encode(long)
  assert seen[0][0, :len(ids)].tolist() == ids and not seen[0][0, len(ids):].any()


def test_packed_rows_hold_whole_pairs_and_resume():
  """Packing keeps every pair whole and aligned (segment k of src is the
  source of segment k of tgt), positions restart per pair, and the
  iterator state restores the exact position."""
  rng = np.random.default_rng(0)
  n, L = 60, 12
  lengths = rng.integers(1, 6, n)
  src = np.zeros((n, L), np.int32)
  tgt = np.zeros((n, L), np.int32)
  for i, k in enumerate(lengths):
    src[i, :k] = 100 + i   # the pair's id, so halves can be matched
    tgt[i, :k + 1] = 100 + i
  ds = translation.train_dataset(src, tgt, 4, 0, 1, 10, 4, seed=0, pack=True)
  it = iter(ds)
  seen, first = [], next(it)
  for batch in [first] + [next(it) for _ in range(3)]:
    assert batch["src"].shape == (4, L)
    for r in range(4):
      for seg in set(batch["src_segments"][r]) - {0}:
        s = batch["src"][r][batch["src_segments"][r] == seg]
        t = batch["tgt"][r][batch["tgt_segments"][r] == seg]
        pair = s[0] - 100
        assert (s == 100 + pair).all() and len(s) == lengths[pair]
        assert (t == 100 + pair).all() and len(t) == lengths[pair] + 1
        pos = batch["src_positions"][r][batch["src_segments"][r] == seg]
        assert pos.tolist() == list(range(len(s)))
        seen.append(pair)
  assert len(seen) > 16  # more than one pair per row on average
  # The stream lasts the whole run although rows hold several pairs.
  long_run = iter(translation.train_dataset(src, tgt, 4, 0, 1, 200, 4, seed=0, pack=True))
  for _ in range(200):
    next(long_run)
  state = it.get_state()
  expected = next(it)
  it2 = iter(translation.train_dataset(src, tgt, 4, 0, 1, 10, 4, seed=0, pack=True))
  it2.set_state(state)
  got = next(it2)
  for k in expected:
    np.testing.assert_array_equal(got[k], expected[k])


def test_default_run_source_smoke_on_tfds_mock_data(tmp_path):
  """`./launch.sh`'s default (configs/seq2seq.py:data=ding) on its own tfds source,
  Ding, with tfds.testing.mock_data, so no test fetches anything."""
  import tensorflow_datasets as tfds
  wd = tmp_path / "run"
  with tfds.testing.mock_data(num_examples=60):
    main_lib.main(["train", "--config", "configs/seq2seq.py:data=ding,runlocal=True",
                   "--workdir", str(wd), f"--config.data.data_dir={tmp_path / 'tfds'}"])
  assert int(load_state(wd)["step"]) == 4
  rows = metrics_lib.read_jsonl(str(wd / "metrics.jsonl"))
  assert np.isfinite([r["eval/loss"] for r in rows if "eval/loss" in r][-1])
  assert (wd / "bleu.json").exists() and (wd / "plots" / "alignment_0.png").exists()


def test_smoothed_cross_entropy_equals_optax_dense_targets():
  import jax
  import optax
  from experiments import translate
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 50)) * 4
  labels = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 0, 50)
  for e in (0.0, 0.1):
    want = optax.softmax_cross_entropy(
        logits, optax.smooth_labels(jax.nn.one_hot(labels, 50), e))
    np.testing.assert_allclose(translate.smoothed_cross_entropy(logits, labels, e), want,
                               rtol=1e-5)
