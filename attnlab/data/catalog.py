"""Where datasets live and how they get prepared.

Local sources are tfds builders whose raw files come through the package
clients (DATA.md), defined in the data modules named below; `builder` and
`data_source` import (register) the one they need, so this module imports
no data module and every data module can import it. Any other tfds name
must already be prepared in the data dir (these machines reach no website).
"""
import importlib
import os

import tensorflow_datasets as tfds

from attnlab import config as config_lib
from attnlab.data import fetch

DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")
LOCAL_BUILDERS = {"shakespeare": "attnlab.data.shakespeare",
                  "ding": "attnlab.data.translation",
                  "bible": "attnlab.data.translation",
                  "fmnist": "attnlab.data.fashion_mnist",
                  "emoji": "attnlab.data.emoji",
                  "openclipart": "attnlab.data.openclipart",
                  "asterisk_prompts": "attnlab.data.asterisk"}


def data_dir(data):
  return os.path.expanduser(data.data_dir or DEFAULT_DATA_DIR)


def _register(name):
  if name in LOCAL_BUILDERS:
    importlib.import_module(LOCAL_BUILDERS[name])


def builder(data, **kwargs):
  _register(data.source)
  return tfds.builder(data.source, data_dir=data_dir(data), **kwargs)


def data_source(data, split, **kwargs):
  _register(data.source)
  return tfds.data_source(data.source, split=split, data_dir=data_dir(data), **kwargs)


def prepare(data):
  """Fetches and prepares a local source once (no-op when prepared).

  Raises ConfigError when the data cannot be had, saying how to get it.
  """
  if data.source == "folder":
    return
  local = builder(data, file_format="array_record")
  if local.is_prepared():
    return
  config_lib.check(
      data.source in LOCAL_BUILDERS, "data.source",
      f"tfds dataset {data.source!r} is not prepared in {data_dir(data)}",
      f"run `tfds build {data.source} --file_format=array_record` where it "
      "can be downloaded and copy it there, or set --config.data.data_dir")
  try:
    local.download_and_prepare()
  except fetch.FetchError as e:
    raise config_lib.ConfigError("data.source", f"cannot fetch "
                                 f"{data.source!r}: {e}",
                                 "or train on --config.data.source=folder") from e
