"""Where datasets live and how they get prepared.

Local sources are tfds builders whose raw files come through the package
clients (DATA.md): importing this module registers them. Any other tfds name
must already be prepared in the data dir (these machines reach no website).
"""
import os

import tensorflow_datasets as tfds

from attnlab import config as config_lib
from attnlab.data import fetch
from attnlab.data import shakespeare  # noqa: F401  (registers the builder)
from attnlab.data import translation  # noqa: F401  (registers ding, bible)

DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")
LOCAL_BUILDERS = ("shakespeare", "ding", "bible")


def data_dir(data):
  return os.path.expanduser(data.data_dir or DEFAULT_DATA_DIR)


def prepare(data):
  """Fetches and prepares a local source once (no-op when prepared).

  Raises ConfigError when the data cannot be had, saying how to get it.
  """
  if data.source == "folder":
    return
  builder = tfds.builder(data.source, data_dir=data_dir(data),
                         file_format="array_record")
  if builder.is_prepared():
    return
  config_lib.check(
      data.source in LOCAL_BUILDERS, "data.source",
      f"tfds dataset {data.source!r} is not prepared in {data_dir(data)}",
      f"run `tfds build {data.source} --file_format=array_record` where it "
      "can be downloaded and copy it there, or set --config.data.data_dir")
  try:
    builder.download_and_prepare()
  except fetch.FetchError as e:
    raise config_lib.ConfigError("data.source", f"cannot fetch "
                                 f"{data.source!r}: {e}",
                                 "or train on --config.data.source=folder") from e
