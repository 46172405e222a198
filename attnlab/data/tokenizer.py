"""SentencePiece subword vocabulary (Kudo & Richardson 2018), trained on the
training split only and cached beside the data, keyed by dataset, languages
and size. Ids: 0 pad, 1 eos, 2 bos, 3 unk."""
import os
import tempfile

import numpy as np
import sentencepiece as spm

PAD, EOS, BOS, UNK = 0, 1, 2, 3


class Tokenizer:

  def __init__(self, model_path):
    self.path = model_path
    self.sp = spm.SentencePieceProcessor(model_file=model_path)

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


def load_or_train(path, texts_fn, vocab_size, max_sentences=300_000):
  """The tokenizer at `path` (.model), trained first if missing.

  `texts_fn()` yields training sentences (both languages: a joint
  vocabulary, as Vaswani et al. share it across source and target).
  """
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
      corpus = os.path.join(tmp, "corpus.txt")
      with open(corpus, "w", encoding="utf-8") as f:
        for i, line in enumerate(texts_fn()):
          if i >= max_sentences:
            break
          f.write(line.replace("\n", " ") + "\n")
      spm.SentencePieceTrainer.train(
          input=corpus, model_prefix=os.path.join(tmp, "spm"),
          vocab_size=vocab_size, model_type="unigram", character_coverage=1.0,
          pad_id=PAD, eos_id=EOS, bos_id=BOS, unk_id=UNK,
          input_sentence_size=max_sentences, shuffle_input_sentence=True,
          hard_vocab_limit=False,  # small corpora get a smaller vocabulary
          num_threads=2, minloglevel=2)
      # Atomic: a killed training never leaves a half-written model.
      os.replace(os.path.join(tmp, "spm.model"), path)
  return Tokenizer(path)


def pad_batch(rows, length):
  """List of id lists -> [N, length] int32, truncated, zero-padded."""
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    r = r[:length]
    out[i, :len(r)] = r
  return out
