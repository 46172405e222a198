"""Test set-up: 8 fake CPU devices, a persistent compilation cache and
unoptimised machine code.

All must be set before JAX starts, so they are set here, at import (the
CLI subprocesses inherit them).
"""
import os
import sys

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.expanduser("~"), ".cache", "attnlab", "jax-tests"))
# The tests' programs are tiny: compiling them, not running them, is the
# suite's cost, and LLVM's optimisation passes are a large part of it. The
# programs are the same (XLA's own passes still run), and every comparison a
# test makes runs both sides under this same setting.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

WORDS = ("the king my lord good sir love night death heaven thou art thee "
         "what is and not to be or that sweet fair queen come go now here "
         "o speak mine eyes heart with all this was shall will").split()


def make_text(n_chars, seed=0):
  """Deterministic play-like text: speaker lines, verse, a few quotes and
  [stage directions]."""
  rng = np.random.default_rng(seed)
  out, size = [], 0
  while size < n_chars:
    speaker = rng.choice(["KING", "QUEEN", "HAMLET", "FOOL"])
    words = list(rng.choice(WORDS, rng.integers(4, 10)))
    if rng.random() < 0.2:
      words[1] = '"' + words[1]
      words[-1] = words[-1] + '"'
    line = f"{speaker}:\n{' '.join(words).capitalize()}.\n\n"
    if rng.random() < 0.1:
      line += f"[Exit {speaker}.]\n\n"
    out.append(line)
    size += len(line)
  return "".join(out)[:n_chars]


def write_text_folder(root):
  """A bring-your-own-data folder with train/ and test/ text files."""
  for split, n, seed in (("train", 40_000, 0), ("test", 8_000, 1)):
    d = root / "data" / split
    d.mkdir(parents=True)
    (d / "a.txt").write_text(make_text(n, seed))
  return str(root / "data")


@pytest.fixture
def text_folder(tmp_path):
  return write_text_folder(tmp_path)


@pytest.fixture(scope="session")
def shared_text_folder(tmp_path_factory):
  """The same folder, made once for tests that share runs on it (session
  scope: pytest-xdist may interleave other modules' tests between them)."""
  return write_text_folder(tmp_path_factory.mktemp("shared"))


def tiny_overrides(folder, **extra):
  """Command-line overrides for a seconds-long char-LM run on `folder`."""
  args = {"data.source": "folder", "data.folder": folder,
          "data.eval_chars": 2000, "sample.length": 20}
  args.update(extra)
  return [f"--config.{k}={v}" for k, v in args.items()]
