"""Fashion-MNIST (Xiao et al. 2017) as a tensorflow-datasets builder: `fmnist`.

Source: Debian's `dataset-fashion-mnist` (MIT), fetched with `apt-get
download` and read from the .deb without installing it: the original idx
files, 60,000 training and 10,000 test images, 28 x 28 grey, 10 classes.
The last 5,000 training images are the `validation` split (for choosing
configs and checkpoints), so `train` has 55,000; `test` is the original
10,000, read once for the number reported.

Named `fmnist` rather than `fashion_mnist`, which is tfds's own builder
(downloaded from the web, without a validation split); that one still
works where it is prepared.
"""
import gzip
import io
import os

import numpy as np
import tensorflow_datasets as tfds

from attnlab.data import fetch

DEB = {"name": "dataset-fashion-mnist", "version": "0.0~git20200523.55506a9-1",
       "sha256": "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
       "folder": "/usr/share/datasets/fashion-mnist/"}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
           "Shirt", "Sneaker", "Bag", "Ankle boot")
VALIDATION = 5000


def read_idx(raw):
  """An idx file (gzip): a big-endian header (magic, then one int32 per
  dimension) and uint8 data. Returns the array."""
  data = gzip.decompress(raw)
  magic = int.from_bytes(data[:4], "big")
  if magic >> 8 != 0x08:  # 0x08: unsigned bytes
    raise ValueError(f"idx magic {magic:#x} is not of uint8 data")
  ndim = magic & 0xFF
  shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def png(image):
  """[H, W] or [H, W, C] uint8 -> PNG bytes (PIL: tfds would need TensorFlow)."""
  from PIL import Image
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return out.getvalue()


class Fmnist(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST: 55,000 train, 5,000 validation, 10,000 test images."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "dataset-fashion-mnist 0.0~git20200523.55506a9-1; "
                            "validation = the last 5,000 training images."}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(names=CLASSES)}),
        supervised_keys=("image", "label"),
        license="MIT (Zalando Research)")

  def _split_generators(self, dl_manager):
    deb = fetch.apt_deb(DEB["name"], DEB["version"], DEB["sha256"],
                        os.path.join(dl_manager.download_dir, "apt"))
    read = lambda name: read_idx(fetch.deb_member(deb, DEB["folder"] + name))
    train = read("train-images-idx3-ubyte.gz"), read("train-labels-idx1-ubyte.gz")
    test = read("t10k-images-idx3-ubyte.gz"), read("t10k-labels-idx1-ubyte.gz")
    cut = len(train[0]) - VALIDATION
    return {"train": self._generate_examples(train, 0, cut),
            "validation": self._generate_examples(train, cut, len(train[0])),
            "test": self._generate_examples(test, 0, len(test[0]))}

  def _generate_examples(self, arrays, start, stop):
    images, labels = arrays
    for i in range(start, stop):
      yield i, {"image": png(images[i]), "label": int(labels[i])}
