"""A run killed at any moment resumes bit-identically when rerun."""
import os
import random
import shutil
import signal
import time

import pytest

from conftest import tiny_overrides
from helpers import assert_trees_equal, cli, load_state, run_cli

STEPS = 24


def args(workdir, folder):
  return ["train", "--config", "configs/charlm.py:runlocal=True",
          "--workdir", str(workdir), *tiny_overrides(
              folder, total_steps=STEPS, ckpt_every=4, log_every=1,
              eval_every=0, keep_ckpts=10)]


@pytest.fixture(scope="session")
def reference(tmp_path_factory, shared_text_folder):
  """One uninterrupted run that every test here compares against (made once
  per pytest-xdist worker that runs one of them)."""
  workdir = tmp_path_factory.mktemp("reference") / "ref"
  rc, out = run_cli(*args(workdir, shared_text_folder))
  assert rc == 0, out
  return workdir, load_state(workdir)


def finished_checkpoints(workdir):
  """Steps of finished checkpoints: a save in flight is an orbax tmp dir."""
  folder = workdir / "checkpoints"
  return [int(d) for d in os.listdir(folder) if d.isdigit()] if folder.exists() else []


def run_until_step(workdir, folder, step, sig, after_a_checkpoint=False):
  """Starts a run and sends `sig` once it has printed `step N/` (and, with
  `after_a_checkpoint`, once a checkpoint has finished)."""
  p = cli(*args(workdir, folder))
  lines = []
  for line in p.stdout:
    lines.append(line)
    if line.startswith(f"step {step}/"):
      deadline = time.time() + 60
      while after_a_checkpoint and not finished_checkpoints(workdir):
        assert time.time() < deadline, "no checkpoint finished in 60 s"
        time.sleep(0.01)
      p.send_signal(sig)
      break
  out = "".join(lines) + p.communicate(timeout=120)[0]
  return p.returncode, out


def test_kill_9_then_rerun_is_bit_identical(tmp_path, shared_text_folder, reference):
  """Killed at a seeded step after the first finished checkpoint, so the
  rerun always proves a resume (not a restart from scratch)."""
  text_folder, ref = shared_text_folder, reference[1]
  kill_at = random.Random(9).randint(6, STEPS - 3)  # ckpt_every is 4
  wd = tmp_path / "killed"
  rc, out = run_until_step(wd, text_folder, kill_at, signal.SIGKILL, after_a_checkpoint=True)
  assert rc == -signal.SIGKILL, out
  done = finished_checkpoints(wd)
  assert done, out
  rc, out = run_cli(*args(wd, text_folder))
  assert rc == 0, out
  assert f"resumed from checkpoint at step {max(done)}" in out, out
  assert_trees_equal(load_state(wd), ref)


def test_sigterm_saves_exits_0_and_resumes(tmp_path, shared_text_folder, reference):
  text_folder, ref = shared_text_folder, reference[1]
  wd = tmp_path / "term"
  rc, out = run_until_step(wd, text_folder, 10, signal.SIGTERM)
  assert rc == 0, out
  stopped = int(out.split("stopped by signal at step ")[1].split(";")[0])
  assert 10 <= stopped < STEPS
  assert str(stopped) in os.listdir(wd / "checkpoints")
  # The test split is for the finished run, not for a stopped one.
  assert "test (" not in out and not (wd / "test.json").exists(), out
  rc, out = run_cli(*args(wd, text_folder))
  assert rc == 0, out
  assert f"resumed from checkpoint at step {stopped}" in out
  assert_trees_equal(load_state(wd), ref)


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path, shared_text_folder,
                                                            reference):
  wd = tmp_path / "run"
  shutil.copytree(reference[0], wd)  # a finished run, its newest checkpoint then cut
  ref = reference[1]
  text_folder = shared_text_folder
  newest = wd / "checkpoints" / str(STEPS)
  files = [os.path.join(d, f) for d, _, fs in os.walk(newest / "state")
           for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  rc, out = run_cli(*args(wd, text_folder))
  assert rc == 0, out
  assert f"checkpoint {STEPS} is unreadable" in out, out
  assert f"resumed from checkpoint at step {STEPS - 4}" in out, out
  assert os.path.isdir(wd / "corrupt_checkpoints" / str(STEPS))  # kept
  assert_trees_equal(load_state(wd), ref)
