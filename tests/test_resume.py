"""A run killed at any moment resumes bit-identically when rerun."""
import json
import os
import random
import shutil
import signal
import time

import pytest

from conftest import tiny_overrides
from helpers import ROOT, assert_trees_equal, cli, load_state, run_cli

STEPS = 24


def args(workdir, folder):
  return ["train", "--config", os.path.join(ROOT, "configs/charlm.py:runlocal=True"),
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


def finished_checkpoints(workdir, on_gcs=False):
  """Steps of finished checkpoints: a save in flight is an orbax tmp dir,
  or on GCS (written in place) a step folder without commit_success.txt."""
  folder = workdir / "checkpoints"
  return [int(d.name) for d in folder.iterdir() if d.name.isdigit() and
          (not on_gcs or (d / "commit_success.txt").exists())] if folder.exists() else []


def run_until_step(workdir, folder, step, sig, after_a_checkpoint=False, gcs_root=None,
                   cwd=ROOT):
  """Starts a run and sends `sig` once it has printed `step N/` (and, with
  `after_a_checkpoint`, once a checkpoint has finished). With gcs_root,
  workdir and folder are gs:// paths inside it (tests/fake_gcs.py)."""
  p = cli(*args(workdir, folder), gcs_root=gcs_root, cwd=cwd)
  local = workdir if gcs_root is None else gcs_root / str(workdir)[len("gs://"):]
  lines = []
  for line in p.stdout:
    lines.append(line)
    if line.startswith(f"step {step}/"):
      deadline = time.time() + 60
      while after_a_checkpoint and not finished_checkpoints(local, gcs_root is not None):
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


def test_a_run_on_cloud_storage_is_killed_and_resumes(tmp_path, shared_text_folder, reference):
  """Workdir and text folder on gs:// (tests/fake_gcs.py: a local folder
  behind fsspec's gs protocol, objects that cannot be appended to, orbax's
  TensorStore writing there): killed after a checkpoint, rerun, it ends
  bit-identical to the local run, with every file in the bucket and none
  beside the process (where a local-only call would have put "gs:/...")."""
  root, cwd = tmp_path / "gcs", tmp_path / "cwd"
  shutil.copytree(shared_text_folder, root / "bucket" / "text")
  cwd.mkdir()
  run = root / "bucket" / "run"
  kill_at = random.Random(3).randint(6, STEPS - 3)
  rc, out = run_until_step("gs://bucket/run", "gs://bucket/text", kill_at, signal.SIGKILL,
                           after_a_checkpoint=True, gcs_root=root, cwd=cwd)
  assert rc == -signal.SIGKILL, out
  done = finished_checkpoints(run, on_gcs=True)
  assert done, out
  p = cli(*args("gs://bucket/run", "gs://bucket/text"), gcs_root=root, cwd=cwd)
  out = p.communicate(timeout=240)[0]
  assert p.returncode == 0, out
  assert f"resumed from checkpoint at step {max(done)}" in out, out
  assert_trees_equal(load_state(run), reference[1])
  assert sorted(os.listdir(cwd)) == [], os.listdir(cwd)
  assert {"config.json", "metrics.jsonl", "vocab.json", "tb", "test.json"} <= set(
      os.listdir(run)), os.listdir(run)
  steps = {json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()}
  assert steps >= set(range(1, STEPS + 1)), sorted(steps)  # both runs' rows kept
  assert any(f.startswith("events.out.tfevents.") for f in os.listdir(run / "tb"))
