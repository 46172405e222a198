"""Where a run's files live: a local folder or cloud storage.

Every file attnlab reads or writes in a workdir or a data folder goes
through `etils.epath`, so `--workdir gs://BUCKET/run` (or s3://) works on a
pod exactly like a local folder: checkpoints (orbax, which takes the same
paths), config.json, metrics.jsonl, TensorBoard events, plots, samples,
tokenizers, and folders of images or text given as data.
"""
import io
import os
import socket

from etils import epath

SCHEMES = ("gs", "s3", "az", "hf")  # the URI schemes epath serves


def path(p):
  """str or Path -> epath.Path (`~` expanded in local paths)."""
  text = os.fspath(p)
  return epath.Path(text if "://" in text else os.path.expanduser(text))


def absolute(p):
  """path(p), local ones made absolute (orbax requires it)."""
  return path(p) if is_remote(p) else path(p).resolve()


def walk(folder):
  """(folder, its subfolders' names, its files' names), then the same for
  every subfolder, hidden ones left out as glob does. By listing: epath's
  walk on gs:// (fsspec) yields folders without their scheme, and it has
  no recursive glob there."""
  folder = path(folder)
  entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
  dirs = sorted(p.name for p in entries if p.is_dir())
  yield folder, dirs, sorted(p.name for p in entries if p.name not in dirs)
  for d in dirs:
    yield from walk(folder / d)


def files_under(folder, suffixes):
  """Sorted paths (str) of the files below folder whose names end in one of
  suffixes (lower-cased)."""
  return sorted(str(d / f) for d, _, files in walk(folder)
                for f in files if f.lower().endswith(suffixes))


def files_in(folder, suffixes):
  """Sorted paths (str) of the files directly in folder ending in suffixes
  ([] if there is no such folder)."""
  if not path(folder).is_dir():
    return []
  return sorted(str(p) for p in path(folder).iterdir()
                if not p.name.startswith(".") and p.name.lower().endswith(suffixes))


def is_remote(p):
  return "://" in os.fspath(p)


def unserved(p, flag="--workdir", here=True):
  """(problem, fix) for a path whose scheme no installed backend serves (a
  typo such as gcs://, or, when it is to be read `here`, gs:// with neither
  gcsfs nor TensorFlow installed); None for one that can be read.
  config.check_served makes it the one-line error."""
  text = os.fspath(p)
  if "://" not in text:
    return None
  scheme = text.split("://")[0]
  if scheme not in SCHEMES:
    return (f"{text!r} has the scheme {scheme}://, which no storage backend serves",
            f"give {flag} a local folder or one of {', '.join(s + '://' for s in SCHEMES)}")
  if not here:
    return None
  try:
    epath.Path(text).exists()
  except (ImportError, NotImplementedError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return (f"{scheme}:// paths cannot be read here ({reason})",
            "install its fsspec backend (gcsfs for gs://, s3fs for s3://; "
            "ATTNLAB_ACCELERATOR=tpu ./launch.sh installs gcsfs)")
  return None


def write_atomic(target, data):
  """Writes text or bytes so that a reader (or a rerun after a kill) sees
  the old file or the new one, never half of one."""
  target = path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  # Several processes may write the same file: each through its own name.
  tmp = target.parent / f"{target.name}.{socket.gethostname()}.{os.getpid()}.tmp"
  if isinstance(data, str):
    tmp.write_text(data)
  else:
    tmp.write_bytes(data)
  tmp.replace(target)


def png_of(figure, dpi=100):
  buf = io.BytesIO()
  figure.savefig(buf, format="png", dpi=dpi)
  return buf.getvalue()


def save_figure(figure, target, dpi=100):
  """A matplotlib figure as a PNG at target (any epath); returns the bytes."""
  png = png_of(figure, dpi)
  target = path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_bytes(png)
  return png
