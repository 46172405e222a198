"""`launch.sh tpu ... --dry_run` prints the exact gcloud commands."""
import shlex
import subprocess

from helpers import ROOT


def test_dry_run_prints_the_pod_commands():
  out = subprocess.run(
      ["./launch.sh", "tpu", "my-pod", "--zone", "us-central2-b", "--project",
       "proj", "--dry_run", "train", "configs/charlm.py:cell=gru",
       "--workdir", "/mnt/runs/gru", "--config.optim.lr=1e-3"],
      cwd=ROOT, capture_output=True, text=True, check=True).stdout
  lines = out.strip().splitlines()
  assert lines == [
      "gcloud compute tpus tpu-vm scp --recurse . 'my-pod:~/attnlab' "
      "--worker=all --zone=us-central2-b --project=proj",
      "gcloud compute tpus tpu-vm ssh my-pod --worker=all "
      "--zone=us-central2-b --project=proj "
      + shlex.quote("--command=cd ~/attnlab && ATTNLAB_ACCELERATOR=tpu "
                    "ATTNLAB_DISTRIBUTED=1 ./launch.sh train "
                    "configs/charlm.py:cell=gru --workdir /mnt/runs/gru "
                    "--config.optim.lr=1e-3"),
  ]


def test_bad_pod_config_fails_here_not_on_the_pod():
  p = subprocess.run(
      ["./launch.sh", "tpu", "my-pod", "--zone", "z", "--dry_run", "train",
       "configs/charlm.py", "--workdir", "w", "--config.optim.lrr=1"],
      cwd=ROOT, capture_output=True, text=True)
  assert p.returncode == 2 and "optim.lrr" in p.stderr and not p.stdout
