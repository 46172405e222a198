"""TPU pods: `launch.sh tpu ... --dry_run` prints the exact gcloud commands;
`compile` checks a config fits before a pod is booked."""
import shlex
import subprocess

from helpers import ROOT, run_cli


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


def test_a_bucket_workdir_is_for_the_workers_but_a_typo_fails_here():
  """The machine that books the pod need not read gs:// (no gcsfs on a
  laptop, as here): only the workers, which `launch.sh` gives gcsfs, must.
  An unknown scheme is a typo wherever it would be read."""
  run = lambda workdir: subprocess.run(
      ["./launch.sh", "tpu", "my-pod", "--zone", "z", "--dry_run", "train",
       "configs/charlm.py", "--workdir", workdir], cwd=ROOT, capture_output=True, text=True)
  ok = run("gs://bucket/run")
  assert ok.returncode == 0 and "--workdir gs://bucket/run" in ok.stdout, ok.stderr
  typo = run("gcs://bucket/run")
  assert typo.returncode == 2 and "gcs://" in typo.stderr and not typo.stdout


def test_ahead_of_time_compile_reports_memory_per_device():
  """`compile` needs no data: the Ding Transformer for 2 fake devices. Its
  arguments per device are the replicated state (params + Adam's two
  moments, f32) plus half the batch."""
  import re
  code, out = run_cli("compile", "configs/wmt.py:ding", "--devices", "2")
  assert code == 0, out
  params = int(re.search(r"([\d,]+) params", out).group(1).replace(",", ""))
  args = float(re.search(r"arguments ([\d.]+) GiB", out).group(1))
  expected = (3 * params * 4 + 6 * 64 * 32 * 4 / 2) / 2 ** 30
  assert abs(args - expected) < 0.002, (args, expected)
  assert "TFLOP per step" in out and "{'data': 2}" in out
