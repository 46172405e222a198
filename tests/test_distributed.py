"""Two local processes under jax.distributed (gloo collectives on CPU) train
the same model as one process with the same devices and global batch."""
import numpy as np
import jax
import portpicker

from conftest import tiny_overrides
from helpers import cli, load_state, run_cli

STEPS = 6


def args(workdir, folder):
  return ["train", "--config", "configs/charlm.py:runlocal=True",
          "--workdir", str(workdir), *tiny_overrides(
              folder, total_steps=STEPS, ckpt_every=3, log_every=1,
              eval_every=STEPS)]


def test_two_processes_equal_one_process(tmp_path, text_folder):
  rc, out = run_cli(*args(tmp_path / "one", text_folder), devices=2)
  assert rc == 0, out
  port = portpicker.pick_unused_port()
  procs = [cli(*args(tmp_path / "two", text_folder), devices=1, env={
      "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
      "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert "2 process(es)" in outs[0] and "per host 4" in outs[0]
  one, two = load_state(tmp_path / "one"), load_state(tmp_path / "two")
  assert int(two["step"]) == STEPS
  for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(two["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Each process saved its own data-iterator state.
  files = sorted(p.name for p in (tmp_path / "two" / "checkpoints" / str(STEPS)
                                  / "data").iterdir())
  assert files == ["commit_success.txt", "process_0-of-2.json",
                   "process_1-of-2.json"]


def test_a_signal_to_one_host_stops_every_host_at_one_step(tmp_path, text_folder):
  """A preemption notice reaching one host only: the hosts agree on the
  flag at the next logging step (not every step: that would sync every
  step), all save that step and exit 0."""
  import os
  import re
  import signal
  port = portpicker.pick_unused_port()
  run = ["train", "--config", "configs/charlm.py:runlocal=True", "--workdir",
         str(tmp_path / "two"), *tiny_overrides(text_folder, total_steps=100_000, log_every=3,
                                                ckpt_every=0, eval_every=0)]
  procs = [cli(*run, devices=1, env={
      "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
      "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  try:
    seen = []
    for line in procs[0].stdout:  # process 0 logs; the signal goes to process 1
      seen.append(line)
      if line.startswith("step 3/"):
        os.kill(procs[1].pid, signal.SIGTERM)
        break
    outs = ["".join(seen) + procs[0].communicate(timeout=120)[0],
            procs[1].communicate(timeout=120)[0]]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs
  stopped = int(re.search(r"stopped by signal at step (\d+)", outs[0]).group(1))
  assert stopped % 3 == 0, outs[0]  # a logging step
  assert int(load_state(tmp_path / "two")["step"]) == stopped
