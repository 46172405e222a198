"""`python tests/fake_gcs.py ROOT COMMAND ...`: attnlab's CLI with gs:// served
from the local folder ROOT (gs://BUCKET/x is ROOT/BUCKET/x), to prove that a
run reads and writes its workdir and data only through epath and orbax.

What is faked is what a pod's gcsfs and TensorStore would do: fsspec's "gs"
protocol (epath's backend for gs:// without TensorFlow) answers like gcsfs,
with paths returned as BUCKET/x and no appending to an object (GCS objects
are immutable); orbax's TensorStore driver for gs:// becomes a file driver
under ROOT; orbax asks the bucket whether it has a hierarchical namespace
(google-cloud-storage): it has not. Any local-file call left in attnlab
would write a folder named "gs:" in the working directory instead, which
the test looks for.
"""
import os
import sys

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem


def install(root):

  class FakeGCS(DirFileSystem):
    protocol = ("gs", "gcs")

    def __init__(self, *args, **kwargs):  # epath passes gcsfs's options
      super().__init__(path=root, fs=LocalFileSystem())

    def open(self, path, mode="rb", *args, **kwargs):
      if "a" in mode:
        raise NotImplementedError(f"GCS objects cannot be appended to ({path})")
      return super().open(path, mode, *args, **kwargs)

  for name in FakeGCS.protocol:
    fsspec.register_implementation(name, FakeGCS, clobber=True)

  from orbax.checkpoint._src.path import gcs_utils

  def kvstore(ckpt_path):
    bucket, rest = gcs_utils.parse_gcs_path(ckpt_path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(root, bucket, rest)}

  gcs_utils.get_kvstore_for_gcs = kvstore
  gcs_utils.get_bucket = lambda name: object()  # no hierarchical namespace


if __name__ == "__main__":
  install(os.path.abspath(sys.argv[1]))
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  from attnlab import main
  main.main(sys.argv[2:])
