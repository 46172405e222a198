"""SentencePiece subword vocabulary (Kudo & Richardson 2018), trained on the
training split only, or a word vocabulary (Words: the captioning papers'
choice). Ids: 0 pad, 1 eos, 2 bos, 3 unk.

A run keeps its own copy, `workdir/tokenizer.model`: resuming, sampling,
evaluating and fine-tuning from the run never depend on the data or a cache
staying unchanged. The shared cache beside the data is keyed by a hash of
the exact training text and every trainer setting, so other text (another
folder with the same language codes, an edited file) never reuses a model
it was not trained on.
"""
import collections
import hashlib
import itertools
import json
import os
import re
import tempfile

import numpy as np
import sentencepiece as spm

from attnlab import config as config_lib
from attnlab import storage

PAD, EOS, BOS, UNK = 0, 1, 2, 3
RUN_FILE = "tokenizer.model"
WORDS_FILE = "words.json"
SETTINGS = dict(model_type="unigram", character_coverage=1.0, pad_id=PAD,
                eos_id=EOS, bos_id=BOS, unk_id=UNK,
                hard_vocab_limit=False)  # small corpora get a smaller vocabulary


class Tokenizer:

  def __init__(self, model_path):
    self.path = storage.path(model_path)  # local or cloud: read as bytes
    self.sp = spm.SentencePieceProcessor(model_proto=self.path.read_bytes())

  def __len__(self):
    return self.sp.get_piece_size()

  def encode(self, text):
    return self.sp.encode(text)

  def decode(self, ids):
    ids = [int(i) for i in ids]
    if EOS in ids:
      ids = ids[:ids.index(EOS)]
    return self.sp.decode([i for i in ids if i > UNK])

  def pieces(self, ids):
    return [self.sp.id_to_piece(int(i)) for i in ids]

  def unknown_chars(self, text):
    """Characters of `text` the vocabulary has no piece for (-> unk)."""
    return sorted({c for c in text if not c.isspace()
                   and UNK in self.sp.encode(c)})


class Words:
  """A word vocabulary: the training text's words that occur at least
  `min_count` times, most frequent first, at most `vocab_size` ids in all
  (Xu et al. 2015 keep COCO's 10,000 most frequent words); any other word
  is UNK. Words are runs of letters/digits (apostrophes and hyphens inside
  them kept: "let's", "t-shirt") and single punctuation marks; the same
  interface as Tokenizer."""

  PATTERN = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")
  RESERVED = ("<pad>", "</s>", "<s>", "<unk>")  # PAD, EOS, BOS, UNK

  def __init__(self, words):
    self.words = list(self.RESERVED) + [w for w in words if w not in self.RESERVED]
    self.index = {w: i for i, w in enumerate(self.words)}

  @classmethod
  def split(cls, text):
    return cls.PATTERN.findall(text)

  @classmethod
  def from_texts(cls, texts, vocab_size, min_count=1):
    counts = collections.Counter(w for t in texts for w in cls.split(t))
    kept = sorted((w for w, n in counts.items() if n >= min_count),
                  key=lambda w: (-counts[w], w))  # ties by spelling: deterministic
    return cls(kept[:max(vocab_size - len(cls.RESERVED), 0)])

  def __len__(self):
    return len(self.words)

  def encode(self, text):
    return [self.index.get(w, UNK) for w in self.split(text)]

  def decode(self, ids):
    ids = [int(i) for i in ids]
    if EOS in ids:
      ids = ids[:ids.index(EOS)]
    text = " ".join(self.words[i] for i in ids if i >= UNK)  # an unknown word shows
    # No space before closing punctuation ("face: grin, happy").
    return re.sub(r" ([,.:;!?)])", r"\1", text)

  def pieces(self, ids):
    return [self.words[int(i)] for i in ids]

  def unknown_chars(self, text):
    """The words of `text` the vocabulary does not have (-> unk)."""
    return sorted({w for w in self.split(text) if w not in self.index})


def words_for_run(workdir, texts_fn, vocab_size, min_count=1):
  """The run's Words: its own copy (workdir/words.json) when it has one,
  else built from `texts_fn()` (the training split) and saved there, so
  evaluating and captioning never depend on the data staying the same.
  Every process builds the same vocabulary from the same text."""
  path = storage.path(workdir) / WORDS_FILE if workdir else None
  if path is not None and path.exists():
    return Words(json.loads(path.read_text())["words"][len(Words.RESERVED):])
  words = Words.from_texts(texts_fn(), vocab_size, min_count)
  config_lib.check(len(words) > len(Words.RESERVED), "data.vocab_size",
                   f"no word of the training text fits a vocabulary of {vocab_size} "
                   f"with min_count {min_count}", "raise data.vocab_size or lower data.min_count")
  if path is not None:
    storage.write_atomic(path, json.dumps({"words": words.words}))
  return words


def for_run(workdir, cache_dir, name, texts_fn, vocab_size, copy_from=None,
            max_sentences=300_000):
  """The run's tokenizer.

  The run's own copy when it has one; else `copy_from`'s (the workdir of a
  pretrained run, whose ids the new run must share); else trained on
  `texts_fn()` (sentences of the training split; translation passes both
  languages: a joint vocabulary, as Vaswani et al. share it) through the
  cache, then copied into the run. With several processes, process 0's
  model is sent to all, so every host uses the same ids whatever its disks
  hold. `workdir` empty: the cache only (one process: benchmarks).
  """
  import jax
  if not workdir:
    return Tokenizer(cached(cache_dir, name, texts_fn(), vocab_size, max_sentences))
  own = storage.path(workdir) / RUN_FILE
  if own.exists():
    return Tokenizer(own)
  blob, error = None, None
  if jax.process_index() == 0:
    try:
      if copy_from:
        source = storage.path(copy_from) / RUN_FILE
        config_lib.check(source.exists(), "init_from",
                         f"{copy_from} has no {RUN_FILE}",
                         "give the workdir of a run that trained a tokenizer")
      else:
        source = cached(cache_dir, name, texts_fn(), vocab_size, max_sentences)
      blob = storage.path(source).read_bytes()
    except config_lib.ConfigError as e:
      error = e
  if jax.process_count() > 1:
    blob = _broadcast_bytes(blob)  # empty: process 0 failed, and says why
  if error or not blob:
    raise error or config_lib.ConfigError(
        "data", "process 0 could not build the tokenizer", "see its error")
  # Every process writes the same bytes: hosts with their own local disks
  # each need the file when the run resumes.
  storage.write_atomic(own, blob)
  return Tokenizer(own)


def cached(cache_dir, name, texts, vocab_size, max_sentences=300_000):
  """Path of the model trained on `texts` with SETTINGS and `vocab_size`,
  trained first if the cache has none for exactly that text."""
  lines = [t.replace("\n", " ") for t in itertools.islice(texts, max_sentences)]
  config_lib.check(any(line.strip() for line in lines), "data.train_split",
                   "the training split has no text", "check the data files")
  settings = dict(SETTINGS, vocab_size=vocab_size, sentencepiece=spm.__version__)
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for line in lines:
    key.update(line.encode("utf-8") + b"\n")
  path = storage.path(cache_dir) / f"{name}_{vocab_size}_{key.hexdigest()[:16]}.model"
  if path.exists():
    return path
  # sentencepiece trains from a local file: a local temporary folder, then
  # the model is copied to the cache (which may be on cloud storage).
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
      f.writelines(line + "\n" for line in lines)
    try:
      spm.SentencePieceTrainer.train(
          input=corpus, model_prefix=os.path.join(tmp, "spm"), vocab_size=vocab_size,
          input_sentence_size=max_sentences, num_threads=2, minloglevel=2,
          **SETTINGS)
    except RuntimeError as e:
      # "Vocabulary size is smaller than required_chars. 64 vs 129.": every
      # character needs a piece (character_coverage 1.0), plus the 4 ids.
      need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
      if not need:
        raise
      raise config_lib.ConfigError(
          "data.vocab_size", f"{vocab_size} is smaller than the {need[1]} pieces the "
          "training text needs (one per distinct character, plus 4 special ids)",
          f"set --config.data.vocab_size={need[1]} or more") from None
    # Atomic: a killed training never leaves a half-written model.
    with open(os.path.join(tmp, "spm.model"), "rb") as f:
      storage.write_atomic(path, f.read())
  return path


def _broadcast_bytes(blob):
  """Process 0's bytes on every process (others pass None)."""
  from jax.experimental import multihost_utils
  n = int(multihost_utils.broadcast_one_to_all(np.int64(len(blob) if blob else 0)))
  data = np.frombuffer(blob, np.uint8) if blob else np.zeros(n, np.uint8)
  return np.asarray(multihost_utils.broadcast_one_to_all(data)).tobytes()


def pad_batch(rows, length):
  """List of id lists -> [N, length] int32, truncated, zero-padded."""
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    r = r[:length]
    out[i, :len(r)] = r
  return out
