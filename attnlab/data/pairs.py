"""Image-text pairs (CLIP, captioning): random-access sources
of {"image": encoded bytes, "captions": [str, ...], "label": int}.

  emoji   the emoji builder (attnlab/data/emoji.py), both art styles: an
          image's captions are its name ("grinning face with big eyes"),
          each short name that says something else ("smiley"; "_" read
          as a space) and, where emojibase has keywords, "name: keywords";
          label = its category (9 zero-shot classes). Split by emoji: the
          test images are emoji never seen in training, in either style.
  openclipart  the Open Clip Art drawings (attnlab/data/openclipart.py):
          captions as for emoji, from each drawing's name and keywords;
          label = its category (16 zero-shot classes); split by drawing.
  folder  your own pairs: ROOT/<split>/captions.tsv for split = train,
          validation, test; one line per caption, `FILE<TAB>caption`, FILE
          relative to that split's folder; several lines may name the same
          image (several captions). label = -1 (no classes: retrieval only).
"""
import csv
import hashlib
import io

from attnlab import config as config_lib
from attnlab import storage
from attnlab.data import catalog
from attnlab.data import image_ops
from attnlab.data import images

CAPTIONS = "captions.tsv"
SPLITS = ("train", "validation", "test")


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


TFDS_PAIRS = ("emoji", "openclipart")  # tfds builders with name and keywords


def captions_of(row):
  """[name], the short names (emoji only) that are not the name again, and
  "name: keywords" where there are keywords."""
  name, keywords = _text(row["name"]), _text(row["keywords"])
  short = [s.strip().replace("_", " ") for s in _text(row.get("short_names", "")).split(",")]
  short = list(dict.fromkeys(s for s in short if s and s.lower() != name.lower()))
  return [name] + short + ([f"{name}: {keywords}"] if keywords else [])


class _TfdsPairs:

  def __init__(self, ds):
    self.ds = ds

  def __len__(self):
    return len(self.ds)

  def __getitem__(self, i):
    row = self.ds[i]
    return {"image": row["image"], "captions": captions_of(row), "label": int(row["label"])}


class FolderPairs:
  """One split of a captions folder: images read from disk on access."""

  def __init__(self, folder, files, captions):
    self.folder, self.files, self.captions = folder, files, captions

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    return {"image": (storage.path(self.folder) / self.files[i]).read_bytes(),
            "captions": self.captions[i], "label": -1}


def read_captions(folder):
  """(files, captions per file) of folder/captions.tsv, in the order of
  each file's first line; a one-line ConfigError for a missing file, a
  line without a tab, an empty caption or an image that does not exist."""
  path = storage.path(folder) / CAPTIONS
  key = "data.folder"
  config_lib.check(path.is_file(), key, f"{path} does not exist",
                   "write one line per caption: FILE<TAB>caption (docs/data.md)")
  files, captions = [], {}
  lines = io.StringIO(path.read_bytes().decode("utf-8"), newline="")
  for n, line in enumerate(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
    if not line:
      continue
    config_lib.check(len(line) == 2, key, f"{path}:{n} has {len(line)} tab-separated "
                     "fields", "write FILE<TAB>caption, with no tab inside the caption")
    name, caption = line[0].strip(), line[1].strip()
    config_lib.check(bool(caption), key, f"{path}:{n} has an empty caption for {name}",
                     "give every line a caption, or delete the line")
    if name not in captions:
      config_lib.check((storage.path(folder) / name).is_file(), key,
                       f"{path}:{n} names {name}, which is not in {folder}",
                       "fix the file name or add the image")
      files.append(name)
      captions[name] = []
    captions[name].append(caption)
  config_lib.check(bool(files), key, f"{path} has no captions", "add FILE<TAB>caption lines")
  return files, [captions[name] for name in files]


def check_folder(data):
  """Every split's captions file, before anything compiles."""
  config_lib.check(bool(data.folder) and storage.path(data.folder).is_dir(), "data.folder",
                   f"{data.folder!r} is not a directory",
                   "give ROOT with ROOT/train, ROOT/validation, ROOT/test, each with captions.tsv")
  for split in SPLITS:
    read_captions(storage.path(data.folder) / split)


def source(data, split):
  """The split as a random-access source of pairs."""
  if data.source == "folder":
    folder = storage.path(data.folder) / split
    return FolderPairs(folder, *read_captions(folder))
  config_lib.check(data.source in TFDS_PAIRS, "data.source",
                   f"{data.source!r} has no captions",
                   f"use one of {', '.join(TFDS_PAIRS)} or folder")
  import tensorflow_datasets as tfds
  return _TfdsPairs(catalog.data_source(data, split,
                                        decoders={"image": tfds.decode.SkipDecoding()}))


def class_names(data):
  """The zero-shot classes of the source ([] for a folder: no labels)."""
  if data.source == "folder":
    return []
  return list(catalog.builder(data).info.features["label"].names)


def train_dataset(config, src, tokenize, local_batch, process_index, process_count):
  """The grain iterator of training pairs (images.train_dataset): each
  image through config.data.pp_train with one of its captions drawn at
  random each time it is seen, as `tokenize([caption])[0]` (CLIP and
  captioning train on pairs this way)."""
  fn = image_ops.build(config.data.pp_train, "data.pp_train")

  def example(pair, rng):
    caption = pair["captions"][int(rng.integers(len(pair["captions"])))]
    return {"image": fn({"image": pair["image"]}, rng)["image"],
            "tokens": tokenize([caption])[0]}
  return images.train_dataset(src, example, local_batch, process_index, process_count,
                              config.total_steps, config.batch_size, config.seed,
                              workers=config.data.workers)


def shared_with_training(train, held_out):
  """How many held-out pairs are not unseen: their image (its bytes) or
  their first caption (an emoji's or drawing's name) is also a training
  pair's. The builders split by emoji and by drawing, yet a few emoji are
  drawn exactly like another (Norway's flag is Svalbard's) and drawings
  of a collection share a title; a user's folder may hold one image in
  two splits."""
  digest = lambda pair: hashlib.sha256(pair["image"]).digest()
  pictures, names = set(), set()
  for i in range(len(train)):
    pair = train[i]
    pictures.add(digest(pair))
    names.add(pair["captions"][0].lower())
  return sum(1 for i in range(len(held_out))
             if digest(held_out[i]) in pictures or held_out[i]["captions"][0].lower() in names)
