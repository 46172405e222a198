"""Parallel text as tensorflow-datasets builders, from Debian packages.

  ding   German-English sentence pairs from the TU Chemnitz "Ding"
         dictionary (Debian trans-de-en 1.9-6, GPL-2+). Example sentences
         are the train/validation/test pairs; the dictionary's phrase pairs
         are an optional extra training split, `train_phrases`.
  bible  English-Spanish verse pairs: King James Version (Debian
         sword-text-kjv 14.3-1, public domain) and Reina-Valera 1909
         (sword-text-sparv 2.60-1, public domain). Both use the same
         versification, so verse N of one is verse N of the other. Long
         sentences: the setting of Bahdanau et al.'s Figure 2.

Test and validation pairs are provably disjoint from training text: a pair
whose source or target side occurs in any training pair is dropped (the
counts are in the builder's release notes and `split_report`).
"""
import html
import os
import re
import struct
import zlib

import jax
import numpy as np
import tensorflow_datasets as tfds

from attnlab import config as config_lib
from attnlab import storage
from attnlab.data import catalog
from attnlab.data import fetch
from attnlab.data import text as text_lib
from attnlab.data import tokenizer as tok

# --- Ding ----------------------------------------------------------------------
DING = dict(name="trans-de-en", version="1.9-6",
            sha256="45f6b4cf1c434776fba6811d7bc522efabb5425c43ba8afd0e289bf9e2e53df4",
            member="/usr/share/trans/de-en")
_TAGS = re.compile(r"\{[^}]*\}|\[[^\]]*\]|<[^>]*>")
_PARENS = re.compile(r"\([^)]*\)")
_SENTENCE_END = (".", "!", "?")


def _clean_ding(text):
  """'Aal {m} (auf der Speisekarte) [cook.]' -> 'Aal'; first alternative."""
  text = _PARENS.sub("", _TAGS.sub("", text))
  text = text.split("; ")[0]
  return " ".join(text.split())


def is_sentence(text):
  return len(text.split()) >= 4 and text.endswith(_SENTENCE_END) and text[0].isupper()


def ding_pairs(raw):
  """Yields (german, english, is_sentence) from the dictionary's lines.

  A line is `DE :: EN`; sub-entries split by ' | ' align one to one when
  both sides have the same number of them.
  """
  for line in raw.splitlines():
    if not line or line.startswith("#") or " :: " not in line:
      continue
    de, en = line.split(" :: ", 1)
    de_parts, en_parts = de.split(" | "), en.split(" | ")
    if len(de_parts) != len(en_parts):
      continue
    for d, e in zip(de_parts, en_parts):
      sentence = is_sentence(d.strip()) and is_sentence(e.strip())
      d, e = (" ".join(d.split()), " ".join(e.split())) if sentence else (
          _clean_ding(d), _clean_ding(e))
      if d and e:
        yield d, e, sentence


def split_of(key, test_percent=4, validation_percent=4):
  """Deterministic split from a hash of the text (stable across runs)."""
  h = zlib.crc32(key.encode("utf-8")) % 100
  return ("test" if h < test_percent else
          "validation" if h < test_percent + validation_percent else "train")


def disjoint_splits(pairs, extra_train=()):
  """{split: [(src, tgt)]}, deduplicated, with every validation/test pair
  whose source or target appears in training text removed.

  Returns the splits and a report of how many pairs were dropped.
  """
  splits = {"train": [], "validation": [], "test": []}
  seen = set()
  for src, tgt in pairs:
    if (src, tgt) not in seen:
      seen.add((src, tgt))
      splits[split_of(src)].append((src, tgt))
  train_text = {s for pair in splits["train"] for s in pair}
  train_text |= {s for pair in extra_train for s in pair}
  report = {}
  for name in ("validation", "test"):
    kept = [p for p in splits[name] if p[0] not in train_text and p[1] not in train_text]
    report[name] = len(splits[name]) - len(kept)
    splits[name] = kept
  # Validation must not overlap test either.
  test_text = {s for pair in splits["test"] for s in pair}
  splits["validation"] = [p for p in splits["validation"]
                          if p[0] not in test_text and p[1] not in test_text]
  return splits, report


# --- SWORD zText (Bible) ---------------------------------------------------------
KJV = dict(name="sword-text-kjv", version="14.3-1",
           sha256="9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
           folder="/usr/share/sword/modules/texts/ztext/engKJV2006eb/")
RV1909 = dict(name="sword-text-sparv", version="2.60-1",
              sha256="5c87f9b2bc97457e8a872f5bae7ea7ce59cb3de1dcee73e4d4740451863694cf",
              folder="/usr/share/sword/modules/texts/ztext/spaRV1909eb/")
_DROP = re.compile(r"<(note|title)\b[^>]*?(/>|>.*?</\1>)", re.S)
_TAG = re.compile(r"<[^>]+>")


def sword_verses(read):
  """All verse texts of a zText module, in versification order.

  `read(name)` returns the bytes of `ot.bzs`, `ot.bzv`, `ot.bzz`, `nt.*`.
  bzs: 12-byte records (offset, compressed size, size) of zlib blocks in
  bzz; bzv: 10-byte records (block, offset in block, size), one per verse.
  """
  verses = []
  for testament in ("ot", "nt"):
    bzs, bzv, bzz = (read(f"{testament}.{ext}") for ext in ("bzs", "bzv", "bzz"))
    blocks = {}
    for i in range(len(bzv) // 10):
      block, offset, size = struct.unpack_from("<IIH", bzv, 10 * i)
      if size == 0:
        verses.append("")
        continue
      if block not in blocks:
        start, csize, _ = struct.unpack_from("<III", bzs, 12 * block)
        blocks[block] = zlib.decompress(bzz[start:start + csize])
      verses.append(clean_osis(blocks[block][offset:offset + size].decode("utf-8", "replace")))
  return verses


def clean_osis(text):
  """Verse text without notes, titles and markup."""
  text = html.unescape(_TAG.sub("", _DROP.sub("", text)))
  return " ".join(text.split())


# --- builders ------------------------------------------------------------------
_FEATURES = lambda src, tgt: tfds.features.Translation(languages=[src, tgt])


class Ding(tfds.core.GeneratorBasedBuilder):
  """German-English sentence pairs from the Ding dictionary."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "trans-de-en 1.9-6; crc32 split 92/4/4; "
                            "test/validation disjoint from training text."}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__, features=_FEATURES("de", "en"),
        license="GPL-2+ (Ding dictionary, TU Chemnitz)")

  def _split_generators(self, dl_manager):
    deb = fetch.apt_deb(DING["name"], DING["version"], DING["sha256"],
                        os.path.join(dl_manager.download_dir, "apt"))
    raw = fetch.deb_member(deb, DING["member"]).decode("utf-8")
    sentences, phrases = [], []
    for de, en, sentence in ding_pairs(raw):
      (sentences if sentence else phrases).append((de, en))
    splits, _ = disjoint_splits(sentences, extra_train=phrases)
    splits["train_phrases"] = sorted(set(phrases))
    return {name: self._generate_examples(pairs) for name, pairs in splits.items()}

  def _generate_examples(self, pairs):
    for i, (de, en) in enumerate(pairs):
      yield i, {"de": de, "en": en}


class Bible(tfds.core.GeneratorBasedBuilder):
  """English-Spanish verse pairs (KJV / Reina-Valera 1909)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "sword-text-kjv 14.3-1 + sword-text-sparv 2.60-1; "
                            "verse-aligned; crc32 split 92/4/4, disjoint."}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__, features=_FEATURES("en", "es"),
        license="Public domain (KJV, Reina-Valera 1909)")

  def _split_generators(self, dl_manager):
    texts = []
    for module in (KJV, RV1909):
      deb = fetch.apt_deb(module["name"], module["version"], module["sha256"],
                          os.path.join(dl_manager.download_dir, "apt"))
      texts.append(sword_verses(lambda n, d=deb, m=module: fetch.deb_member(d, m["folder"] + n)))
    pairs = [(en, es) for en, es in zip(*texts) if en and es]
    splits, _ = disjoint_splits(pairs)
    return {name: self._generate_examples(p) for name, p in splits.items()}

  def _generate_examples(self, pairs):
    for i, (en, es) in enumerate(pairs):
      yield i, {"en": en, "es": es}


# --- loading and batching ------------------------------------------------------
FOLDER_VALIDATION_PERCENT = 4


def load_pairs(data, split):
  """[(source, target)] strings of a split.

  data.source: "ding", "bible", any prepared tfds translation dataset
  (e.g. "wmt14_translate/de-en"), or "folder": `data.folder` laid out as
  tfds.TranslateFolder expects, `{lang}.{split}.txt` with aligned lines
  (read directly: TranslateFolder itself needs TensorFlow to iterate); a
  folder without `{lang}.validation.txt` files has 4% of its training
  pairs as validation.
  """
  src, tgt = data.src_lang, data.tgt_lang
  if data.source == "folder":
    if split in ("train", "validation") and not has_validation_files(data):
      # No validation files: FOLDER_VALIDATION_PERCENT of the training pairs,
      # chosen by a hash of the source (stable), are validation instead.
      return [(s, t) for s, t in folder_pairs(data.folder, src, tgt, "train")
              if (split_of(s, 0, FOLDER_VALIDATION_PERCENT) == "validation")
              == (split == "validation")]
    return folder_pairs(data.folder, src, tgt, split)
  ds = catalog.data_source(data, split)
  decode = lambda x: x.decode("utf-8") if isinstance(x, bytes) else x
  # Read in blocks: one record at a time costs a lookup each (minutes for
  # Ding's 391k phrase pairs). tfds.testing.mock_data reads one at a time.
  pairs = []
  for start in range(0, len(ds), 8192):
    keys = range(start, min(start + 8192, len(ds)))
    try:
      block = ds.__getitems__(keys)
    except TypeError:
      block = [ds[i] for i in keys]
    pairs.extend((decode(x[src]), decode(x[tgt])) for x in block)
  return pairs


def check_languages(data):
  """data.src_lang and data.tgt_lang must be languages of a tfds source
  (a dataset that cannot be built yet is left to catalog.prepare)."""
  try:
    languages = sorted(catalog.builder(data).info.features.languages)
  except Exception:  # not registered here, not prepared, not a Translation feature
    return
  for key in ("src_lang", "tgt_lang"):
    config_lib.check(data[key] in languages, f"data.{key}",
                     f"{data[key]!r} is not a language of {data.source} (it has {languages})",
                     "set --config.data.src_lang and --config.data.tgt_lang to two of them")


def folder_file(folder, lang, split):
  return os.path.join(folder, f"{lang}.{split}.txt")


def has_validation_files(data):
  return any(storage.path(folder_file(data.folder, lang, "validation")).exists()
             for lang in (data.src_lang, data.tgt_lang))


def check_folder(data):
  """One-line errors for a parallel folder, before anything compiles: a
  missing file (naming the keys that choose the file names), a file that
  is not UTF-8, two sides of a split with different line counts."""
  splits = [data.train_split, data.test_split]
  if data.eval_split != "validation" or has_validation_files(data):
    splits.append(data.eval_split)  # else held out from train (load_pairs)
  for split in splits:
    for lang, key in ((data.src_lang, "data.src_lang"), (data.tgt_lang, "data.tgt_lang")):
      path = folder_file(data.folder, lang, split)
      if not storage.path(path).exists():
        found = [os.path.basename(p) for p in storage.files_in(data.folder, (".txt",))]
        raise config_lib.ConfigError(
            "data.folder", f"{path} is missing: files are named {{{key}}}.{{split}}.txt, "
            f"and data.src_lang={data.src_lang!r} data.tgt_lang={data.tgt_lang!r} "
            f"(source -> target) now; the folder has {found or 'no .txt files'}",
            "set --config.data.src_lang and --config.data.tgt_lang to your files' codes")
    folder_pairs(data.folder, data.src_lang, data.tgt_lang, split)


def folder_pairs(folder, src, tgt, split):
  """Aligned lines of `{src}.{split}.txt` and `{tgt}.{split}.txt`.

  Lines end at "\n" only (a "\r" before it is dropped), as `wc -l` counts
  them: str.splitlines() would also break at U+2028, U+0085 or a form
  feed inside a sentence and shift every pair after it. Files of different
  line counts are refused, never zipped. Pairs with an empty side are
  dropped, and their number printed.
  """
  paths = [folder_file(folder, lang, split) for lang in (src, tgt)]
  sides = []
  for path in paths:
    lines = text_lib.read_utf8(path).split("\n")
    if lines[-1] == "":
      lines.pop()  # the newline that ends the last line
    sides.append(lines)
  config_lib.check(
      len(sides[0]) == len(sides[1]), "data.folder",
      f"{paths[0]} has {len(sides[0]):,} lines but {paths[1]} has {len(sides[1]):,}: "
      "pairing them would shift every pair after the first missing line",
      "make line i of one file the translation of line i of the other")
  pairs = [(s, t) for s, t in zip(*sides) if s.strip() and t.strip()]
  if len(pairs) < len(sides[0]) and jax.process_index() == 0 and paths[0] not in _REPORTED:
    _REPORTED.add(paths[0])  # once per file, not at every evaluation
    print(f"data: {len(sides[0]) - len(pairs)} of {len(sides[0]):,} {split} pairs of "
          f"{folder} have an empty side; dropped", flush=True)
  return pairs


_REPORTED = set()


def encode_pairs(pairs, tokenizer, max_len):
  """Token ids [N, max_len] for source and target (target ends with EOS);
  pairs longer than max_len are dropped (training) by the caller."""
  src = [tokenizer.encode(s) for s, _ in pairs]
  tgt = [tokenizer.encode(t) + [tok.EOS] for _, t in pairs]
  keep = [i for i in range(len(pairs)) if len(src[i]) <= max_len and len(tgt[i]) <= max_len]
  return (tok.pad_batch([src[i] for i in keep], max_len),
          tok.pad_batch([tgt[i] for i in keep], max_len), keep)


def train_dataset(src, tgt, local_batch, process_index, process_count, num_steps,
                  global_batch, seed, pack=False):
  """Grain iterator of shuffled (seeded) pairs, this process's share.

  With `pack`, each row holds as many pairs as fit (grain's first-fit
  packing), with `{src,tgt}_segments` (1, 2, ... per pair, 0 = padding) and
  `{src,tgt}_positions` restarting at 0 for every pair.
  """
  import grain
  n, length = len(src), src.shape[1]
  rows_per_epoch = n
  if pack:  # a row holds at most `length` pieces of a pair's longer side
    rows_per_epoch = np.maximum((src > 0).sum(1), (tgt > 0).sum(1)).sum() / length
  epochs = int(num_steps * global_batch / max(rows_per_epoch, 1)) + 2
  ds = (grain.MapDataset.range(n).repeat(epochs).shuffle(seed=seed)
        [process_index::process_count])
  if not pack:
    ds = ds.map(lambda i: {"src": src[i], "tgt": tgt[i]})
    return (ds.batch(local_batch, drop_remainder=True)
            .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))
  trim = lambda x: x[:max(int(np.count_nonzero(x)), 1)]
  ds = ds.map(lambda i: {"src": trim(src[i]), "tgt": trim(tgt[i])}).to_iter_dataset()
  ds = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct={"src": length, "tgt": length},
      num_packing_bins=local_batch, seed=seed)
  rename = lambda r: {k.replace("_segment_ids", "_segments"): v for k, v in r.items()}
  return ds.map(rename).batch(local_batch, drop_remainder=True)
