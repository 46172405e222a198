"""Text for language models: sources, a character vocabulary, and grain
pipelines of windows for truncated backprop through time.

Sources (`config.data`):
  source="shakespeare"  the tfds builder in attnlab/data/shakespeare.py
  source="folder"       `folder` of .txt files (bring your own): `train/`,
                        `test/` and optionally `validation/` subfolders
                        (without `validation/` the last `holdout` fraction
                        of train/ is validation); without subfolders the
                        last `holdout` of the text is test, and the last
                        `holdout` of the rest validation
  source=<tfds name>    any prepared tfds dataset with a `text_key` feature
"""
import json

import grain
import numpy as np

from attnlab import config as config_lib
from attnlab import storage
from attnlab.data import catalog

def _folder_files(folder):
  return storage.files_under(folder, (".txt",))


def validate(data):
  """Config checks of the data keys that need no compile (one-line errors)."""
  if data.source == "folder":
    config_lib.check(bool(data.folder), "data.folder", "empty",
                     "set --config.data.folder=DIR (a folder of .txt files)")
    config_lib.check_folder("data.folder", data.folder, ".txt files")
    files = _folder_files(data.folder)
    config_lib.check(bool(files), "data.folder",
                     f"{data.folder!r} contains no .txt files",
                     "put UTF-8 .txt files in it")
    for path in files:
      read_utf8(path)
    root = storage.path(data.folder)
    has = [(root / d).is_dir() for d in ("train", "test")]
    config_lib.check(has[0] == has[1], "data.folder",
                     f"{data.folder!r} has a {'train' if has[0] else 'test'}/ subfolder "
                     f"but no {'test' if has[0] else 'train'}/ one",
                     "give both (they are the splits) or neither (the last "
                     "data.holdout of the text is held out)")
    config_lib.check(has[0] or not (root / "validation").is_dir(),
                     "data.folder", f"{data.folder!r} has a validation/ subfolder but "
                     "no train/ and test/ ones", "give all three, or train/ and test/")
  else:
    config_lib.check(not data.folder, "data.folder",
                     f"set but data.source is {data.source!r}",
                     "also set --config.data.source=folder")
    if data.source != "shakespeare":
      try:
        catalog.builder(data)
      except Exception as e:
        config_lib.check(False, "data.source",
                         f"{data.source!r} is not a known tfds dataset "
                         f"({type(e).__name__})",
                         "use 'shakespeare', 'folder' or a tfds name")
  config_lib.check(0 < data.holdout < 1, "data.holdout",
                   f"{data.holdout} is not in (0, 1)", "e.g. 0.05")


def read_utf8(path, key="data.folder"):
  """The text of a UTF-8 file, "\r\n" read as "\n" and a byte-order mark
  dropped (neither is text a model should learn); one-line errors for a
  binary file or another encoding."""
  raw = storage.path(path).read_bytes()
  config_lib.check(b"\0" not in raw, key, f"{path} looks binary (NUL bytes)",
                   "keep only UTF-8 text files in the folder")
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise config_lib.ConfigError(key, f"{path} is not UTF-8 ({e.reason} at byte {e.start})",
                                 "convert it with iconv -t utf-8") from None
  return text.replace("\r\n", "\n")


def load_text(data, split):
  """The whole split as one string (documents joined by blank lines)."""
  if data.source == "folder":
    return _folder_text(data, split)
  ds = catalog.data_source(data, split)
  docs = [ds[i] for i in range(len(ds))]
  if "name" in (docs[0] if docs else {}):
    docs.sort(key=lambda d: d["name"])  # a fixed order of plays
  texts = [d[data.text_key] for d in docs]
  return "\n\n".join(t.decode("utf-8") if isinstance(t, bytes) else t
                     for t in texts)


def load_documents(data, split):
  """[(name, text)] of a tfds split with a `name` feature, sorted by name."""
  ds = catalog.data_source(data, split)
  text = lambda t: t.decode("utf-8") if isinstance(t, bytes) else t
  return sorted((text(d["name"]), text(d[data.text_key])) for d in ds)


FOLDER_SPLITS = ("train", "validation", "test")


def _folder_text(data, split):
  read = lambda folder: "\n\n".join(read_utf8(p) for p in _folder_files(folder))
  config_lib.check(split in FOLDER_SPLITS, "data", f"a folder has no split {split!r}",
                   f"use one of {FOLDER_SPLITS}")
  subfolder = {s: storage.path(data.folder) / s for s in FOLDER_SPLITS}
  if subfolder["train"].is_dir():
    if split == "test" or subfolder["validation"].is_dir():
      return read(subfolder[split])
    parts = {"train": read(subfolder["train"]), "test": ""}  # validation from train
  else:
    text = read(data.folder)
    cut = int(len(text) * (1 - data.holdout))
    parts = {"train": text[:cut], "test": text[cut:]}
  cut = int(len(parts["train"]) * (1 - data.holdout))
  parts["train"], parts["validation"] = parts["train"][:cut], parts["train"][cut:]
  return parts[split]


class CharVocab:
  """Characters of the training text; id 0 is for characters never seen."""

  UNK = "\ufffd"

  def __init__(self, chars):
    self.chars = [self.UNK] + [c for c in chars if c != self.UNK]
    self.index = {c: i for i, c in enumerate(self.chars)}

  @classmethod
  def from_text(cls, text):
    return cls(sorted(set(text)))

  @classmethod
  def load_or_build(cls, path, text_fn):
    """The run's vocabulary: saved once in the workdir, so sampling from a
    checkpoint never depends on the data folder being unchanged."""
    if path and storage.path(path).exists():
      return cls(json.loads(storage.path(path).read_text())["chars"][1:])
    vocab = cls.from_text(text_fn())
    if path:  # every process writes the same file (hosts' own disks)
      storage.write_atomic(path, json.dumps({"chars": vocab.chars}))
    return vocab

  def __len__(self):
    return len(self.chars)

  def encode(self, text):
    return np.fromiter((self.index.get(c, 0) for c in text), np.int32,
                       count=len(text))

  def decode(self, ids):
    return "".join(self.chars[int(i)] for i in ids)


class StreamWindows:
  """Random-access source of TBPTT windows.

  The text is cut into `num_streams` contiguous streams (one per row of the
  global batch). Step s of an epoch gives every stream its next window of
  `seq_len` + 1 characters, so the hidden state at the end of a window is
  the right start for the next one. Each epoch shifts all streams by a
  seeded offset in [0, seq_len) so window borders move between epochs.
  Record r -> (epoch, window, stream), streams restricted to this process.
  """

  def __init__(self, ids, seq_len, num_streams, streams, epochs, seed):
    self.ids, self.seq_len, self.streams = ids, seq_len, list(streams)
    self.stream_len = len(ids) // num_streams
    self.windows = (self.stream_len - seq_len) // seq_len
    if self.windows < 1:
      raise ValueError(
          f"text of {len(ids)} characters is too short for {num_streams} "
          f"streams of windows of {seq_len}: need at least "
          f"{2 * seq_len * num_streams}; lower batch_size or data.seq_len")
    self.offsets = np.random.default_rng(seed).integers(0, seq_len, epochs)
    self.epochs = epochs

  def __len__(self):
    return self.epochs * self.windows * len(self.streams)

  def __getitem__(self, r):
    per_epoch = self.windows * len(self.streams)
    epoch, rest = divmod(r, per_epoch)
    window, s = divmod(rest, len(self.streams))
    start = (self.streams[s] * self.stream_len + self.offsets[epoch]
             + window * self.seq_len)
    chunk = self.ids[start:start + self.seq_len + 1]
    return {"inputs": chunk[:-1], "targets": chunk[1:]}


def windows_per_epoch(num_chars, seq_len, num_streams):
  return (num_chars // num_streams - seq_len) // seq_len


def train_dataset(ids, seq_len, global_batch, local_batch, process_index,
                  num_steps, seed, stateful=True):
  """Grain iterator of this process's rows of each global batch.

  stateful: TBPTT streams (row b of step s+1 continues row b of step s).
  Otherwise windows are shuffled (seeded) and sharded across processes.
  """
  if stateful:
    per_epoch = windows_per_epoch(len(ids), seq_len, global_batch)
    epochs = num_steps // max(per_epoch, 1) + 2
    first = process_index * local_batch
    source = StreamWindows(ids, seq_len, global_batch,
                           range(first, first + local_batch), epochs, seed)
    ds = grain.MapDataset.source(source)
  else:
    n = (len(ids) - 1) // seq_len
    epochs = num_steps * global_batch // max(n, 1) + 2
    ds = (grain.MapDataset.range(n).repeat(epochs).shuffle(seed=seed)
          [process_index::global_batch // local_batch]
          .map(lambda i: {"inputs": ids[i * seq_len:(i + 1) * seq_len],
                          "targets": ids[i * seq_len + 1:(i + 1) * seq_len + 1]}))
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                              prefetch_buffer_size=4))


def eval_windows(ids, seq_len, global_batch, local_batch, process_index,
                 max_chars):
  """[W, local_batch, seq_len + 1] windows of this process's eval streams.

  Every process gets the same W, so all run the same number of steps.
  """
  stream_len = len(ids) // global_batch
  if max_chars:
    stream_len = min(stream_len, max_chars // global_batch + 1)
  w = (stream_len - 1) // seq_len
  rows = []
  for b in range(process_index * local_batch, (process_index + 1) * local_batch):
    s = ids[b * (len(ids) // global_batch):][:w * seq_len + 1]
    rows.append(np.stack([s[i * seq_len:(i + 1) * seq_len + 1] for i in range(w)]))
  return np.stack(rows, axis=1)
