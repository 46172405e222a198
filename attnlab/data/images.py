"""Labelled images: sources and grain pipelines (every vision experiment).

Sources (`config.data.source`):
  "fmnist"       Fashion-MNIST from Debian (attnlab/data/fashion_mnist.py)
  "folder"       bring your own: `data.folder`/<split>/<label>/*.png|jpg|...
                 (splits train, validation, test; labels are the folder
                 names, sorted; without validation/ the last data.holdout
                 of each label's training files is validation)
  a tfds name    any prepared tfds dataset with `image` and `label` features
                 (imagenet2012, cifar10, imagenette, ...)

A source is random access: `source[i]` -> {"image": encoded bytes, "label":
int}. Images stay encoded until the `decode` op of the pipeline, which
`config.data.pp_train` / `pp_eval` choose (attnlab/data/image_ops.py).
"""
import io
import types

import grain
import numpy as np

from attnlab import config as config_lib
from attnlab import storage
from attnlab.data import catalog
from attnlab.data import image_ops

EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
FOLDER_SPLITS = ("train", "validation", "test")


# --- sources -------------------------------------------------------------------
class FolderSource:
  """ROOT/<split>/<label>/<file> as a random-access source; the label is the
  index of the folder's name among the sorted label folders of train/."""

  def __init__(self, files, labels, class_names):
    self.files, self.labels, self.class_names = files, labels, class_names

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    return {"image": storage.path(self.files[i]).read_bytes(), "label": self.labels[i]}


def folder_classes(root):
  return sorted(d.name for d in (storage.path(root) / "train").iterdir() if d.is_dir())


def _label_files(folder):
  return storage.files_in(folder, EXTENSIONS)


def folder_source(data, split):
  """A folder's split; without ROOT/validation/ it is the last `holdout` of
  each label's training files. A tfds slice ("train[:5%]", "test[10:20]")
  slices each label's files alike, so that every label keeps its share."""
  classes = folder_classes(data.folder)
  root = storage.path(data.folder)
  has_validation = (root / "validation").is_dir()
  base = split.split("[")[0]
  read_from = "train" if base == "validation" and not has_validation else base
  files, labels = [], []
  for label, name in enumerate(classes):
    found = _label_files(root / read_from / name)
    if read_from != base or (base == "train" and not has_validation):
      cut = len(found) - int(round(len(found) * data.holdout))
      found = found[cut:] if base == "validation" else found[:cut]
    if base != split:
      import tensorflow_datasets as tfds
      sizes = {base: types.SimpleNamespace(num_examples=len(found))}
      part = tfds.core.ReadInstruction.from_spec(split).to_absolute(sizes)[0]
      found = found[part.from_:part.to]
    files += found
    labels += [label] * len(found)
  return FolderSource(files, labels, classes)


def check_folder(data):
  """One-line errors for a folder that cannot be trained on, before any
  compile: missing splits, a label without images, a file that is not an
  image (named)."""
  from PIL import Image, UnidentifiedImageError
  config_lib.check(bool(data.folder), "data.folder", "empty",
                   "set --config.data.folder=ROOT (ROOT/train/<label>/*.png ...)")
  config_lib.check_folder("data.folder", data.folder, "train/ and test/ subfolders")
  root = storage.path(data.folder)
  for split in ("train", "test"):
    config_lib.check((root / split).is_dir(), "data.folder",
                     f"{data.folder!r} has no {split}/ subfolder",
                     "lay images out as ROOT/{train,test}[,validation]/<label>/*.png")
  classes = folder_classes(data.folder)
  config_lib.check(len(classes) >= 2, "data.folder",
                   f"{str(root / 'train')!r} has {len(classes)} label "
                   "folder(s)", "give one subfolder per label, at least two")
  splits = [s for s in FOLDER_SPLITS if (root / s).is_dir()]
  for split in splits:
    others = sorted({p.name for p in (root / split).iterdir()} - set(classes))
    if others:
      raise config_lib.ConfigError(
          "data.folder", f"{split}/ has {others[0]!r}, which is not a label folder of train/",
          "use the same label folders in every split")
    for name in classes:
      folder = root / split / name
      files = _label_files(folder) if folder.is_dir() else []
      config_lib.check(bool(files) or split != "train", "data.folder",
                       f"label folder {str(folder)!r} has no images ({', '.join(EXTENSIONS)})",
                       "put images in it or remove it")
      for path in files:
        try:
          with Image.open(io.BytesIO(storage.path(path).read_bytes())) as img:
            img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
          raise config_lib.ConfigError(
              "data.folder", f"{path} is not a readable image ({type(e).__name__})",
              "delete or replace the file") from None
  if "validation" not in splits:
    small = [n for n in classes if int(round(
        len(_label_files(root / "train" / n)) * data.holdout)) == 0]
    if small:
      raise config_lib.ConfigError(
          "data.folder", f"train/{small[0]} is too small to hold out "
          f"data.holdout={data.holdout} of it for validation",
          "add a validation/ split or more images")


def source(data, split):
  """The split as a random-access source of {"image": bytes, "label": int}."""
  if data.source == "folder":
    return folder_source(data, split)
  import tensorflow_datasets as tfds
  return ImagesAndLabels(catalog.data_source(
      data, split, decoders={"image": tfds.decode.SkipDecoding()}))


class ImagesAndLabels:
  """A source's image (left encoded) and label alone: a tfds data source's,
  or the images of CLIP's pairs."""

  def __init__(self, ds):
    self.ds = ds

  def __len__(self):
    return len(self.ds)

  def __getitem__(self, i):
    row = self.ds[i]
    return {"image": row["image"], "label": int(row["label"])}


def class_names(data):
  if data.source == "folder":
    return folder_classes(data.folder)
  return list(catalog.builder(data).info.features["label"].names)


def display(image):
  """An encoded image as uint8 RGB [H, W, 3], for figures."""
  return image_ops.OPS["decode"](3)({"image": image}, None)["image"]


def run_pipeline(fn, example, key):
  """`fn(example, rng)` on one example, before anything compiles: an op's
  ValueError there (a wrong order, a size it cannot take) is the one-line
  ConfigError of `key`, not a crash in the middle of a run."""
  try:
    return fn(example, np.random.default_rng(0))
  except config_lib.ConfigError:
    raise
  except ValueError as e:
    raise config_lib.ConfigError(key, str(e), "fix the op order or arguments") from None


def validate(data, pipelines=("pp_train", "pp_eval")):
  """The data.* keys of an image experiment (one line, exit 2)."""
  for key in pipelines:
    for pp in [data[key]] if isinstance(data[key], str) else data[key]:
      image_ops.build(pp, f"data.{key}")
  config_lib.check(0 < data.holdout < 1, "data.holdout",
                   f"{data.holdout} is not in (0, 1)", "e.g. 0.1")
  if data.source == "folder":
    check_folder(data)
  else:
    config_lib.check(not data.folder, "data.folder",
                     f"set but data.source is {data.source!r}",
                     "also set --config.data.source=folder")


# --- pipelines -------------------------------------------------------------------
def train_dataset(src, pp, local_batch, process_index, process_count, num_steps,
                  global_batch, seed, mixup=0.0, num_classes=0, workers=0):
  """Grain iterator of this process's rows of each global batch: shuffled
  every epoch (seeded), sharded across processes, preprocessed by `pp` with
  per-element random numbers, batched; mixup on whole batches. `pp` is a
  pp string or a function (example, rng) -> example (DINO's views)."""
  epochs = num_steps * global_batch // max(len(src), 1) + 2
  ds = (grain.MapDataset.source(src).seed(seed).shuffle().repeat(epochs)
        [process_index::process_count]
        .random_map(pp if callable(pp) else image_ops.build(pp, "data.pp_train"))
        .batch(local_batch, drop_remainder=True))
  if mixup:
    ds = ds.random_map(lambda b, rng: image_ops.mixup(b, rng, mixup, num_classes))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=max(workers, 1),
                                              prefetch_buffer_size=4 * local_batch))


class Preprocessed:
  """src[i] through the eval pipeline (no randomness: one fixed generator
  per row), random access, for attnlab.evals.sharded.batches."""

  def __init__(self, src, pp, key="data.pp_eval"):
    self.src, self.fn = src, image_ops.build(pp, key)

  def __len__(self):
    return len(self.src)

  def __getitem__(self, i):
    return self.fn(self.src[i], np.random.default_rng(i))

class Subset:
  """Rows `index` of a random-access source."""

  def __init__(self, src, index):
    self.src, self.index = src, index

  def __len__(self):
    return len(self.index)

  def __getitem__(self, i):
    return self.src[int(self.index[i])]
