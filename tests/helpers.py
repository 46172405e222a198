"""Helpers shared by tests: run the CLI in a subprocess, read checkpoints."""
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, env=None, devices=1, gcs_root=None, cwd=ROOT, **kwargs):
  """Popen of `python -m attnlab.main ARGS` with `devices` fake devices;
  with `gcs_root`, gs:// is that local folder (tests/fake_gcs.py)."""
  full_env = dict(os.environ)
  full_env.update({"JAX_NUM_CPU_DEVICES": str(devices),
                   "PYTHONUNBUFFERED": "1"})
  full_env.update(env or {})
  program = (["-m", "attnlab.main"] if gcs_root is None else
             [os.path.join(ROOT, "tests", "fake_gcs.py"), str(gcs_root)])
  return subprocess.Popen([sys.executable, *program, *args],
                          cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kwargs)


def run_cli(*args, timeout=240, **kwargs):
  p = cli(*args, **kwargs)
  out, _ = p.communicate(timeout=timeout)
  return p.returncode, out


def load_state(workdir, step=None):
  """The saved train state of a run, as numpy arrays (no target needed)."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.CheckpointManager(
      directory, item_handlers={"state": ocp.StandardCheckpointHandler()}) as m:
    step = m.latest_step() if step is None else step
    meta = m.item_metadata(step)["state"]
    # Saved on any topology, read back onto one local device.
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), meta)
    restored = m.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  return jax.tree.map(np.asarray, restored.state)


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def make_folder(root, per_label=6, test=3, size=12, labels=("blue", "red")):
  """ROOT/{train,test}/<label>/*.png: red or blue squares with noise."""
  rng = np.random.default_rng(0)
  for split, n in (("train", per_label), ("test", test)):
    for c, label in enumerate(labels):
      os.makedirs(os.path.join(root, split, label), exist_ok=True)
      for i in range(n):
        img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        img[..., 2 * (1 - c)] += 180
        Image.fromarray(img).save(os.path.join(root, split, label, f"{i}.png"))
  return str(root)


def kill_9_after_a_checkpoint(args, workdir, at="step 5/"):
  """Start `train ARGS`, SIGKILL it at the first log line starting with
  `at` once a checkpoint directory exists, then rerun it to the end.
  Returns the rerun's (returncode, output)."""
  import signal
  import time
  p = cli(*args)
  for line in p.stdout:
    if line.startswith(at):
      deadline = time.time() + 60
      while not any(d.isdigit() for d in os.listdir(os.path.join(workdir, "checkpoints"))):
        assert time.time() < deadline
        time.sleep(0.01)
      p.send_signal(signal.SIGKILL)
      break
  p.communicate(timeout=60)
  assert p.returncode == -signal.SIGKILL
  return run_cli(*args)


COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30),
           "yellow": (230, 220, 30)}


def make_pairs_folder(root, per_split=(("train", 4), ("validation", 1), ("test", 1))):
  """ROOT/<split>/captions.tsv over small coloured squares and circles."""
  rng = np.random.default_rng(0)
  for split, n in per_split:
    folder = os.path.join(root, split)
    os.makedirs(folder, exist_ok=True)
    lines = []
    for colour, rgb in COLOURS.items():
      for i in range(n):
        img = np.full((16, 16, 3), 255, np.uint8)
        img[4:12, 4:12] = np.clip(np.array(rgb) + rng.integers(-20, 20, 3), 0, 255)
        name = f"{colour}_{i}.png"
        Image.fromarray(img).save(os.path.join(folder, name))
        lines += [f"{name}\ta {colour} square", f"{name}\t{colour}"]
    with open(os.path.join(folder, "captions.tsv"), "w") as f:
      f.write("\n".join(lines) + "\n")
  return str(root)


def deb(path, files):
  """A .deb (ar archive: debian-binary, control, data.tar.xz) holding files
  ({path: bytes, or a str: the target of a symlink})."""
  import io
  import tarfile
  data = io.BytesIO()
  with tarfile.open(fileobj=data, mode="w:xz") as tar:
    for name, body in files.items():
      info = tarfile.TarInfo("./" + name)
      if isinstance(body, str):  # a symlink, as Debian makes of duplicates
        info.type, info.linkname = tarfile.SYMTYPE, body
        tar.addfile(info)
        continue
      info.size = len(body)
      tar.addfile(info, io.BytesIO(body))
  out = b"!<arch>\n"
  for name, body in (("debian-binary", b"2.0\n"), ("control.tar.xz", b""),
                     ("data.tar.xz", data.getvalue())):
    out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
    out += body + b"\n" * (len(body) % 2)
  path.write_bytes(out)
  return str(path)
