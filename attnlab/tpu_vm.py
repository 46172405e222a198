"""Launching on a TPU VM pod slice (`./launch.sh tpu NAME ... train ...`):
the gcloud commands that create the slice, copy this repository to every
worker and start `launch.sh train` on all of them at once. Whether the config
fits the slice is checked before, by the TPU compiler (`attnlab/cost.py`).
"""
import shlex

from attnlab import tpu


def commands(name, zone, project, train_args, accelerator=None):
  """The gcloud commands that run `launch.sh train ...` on every worker of a
  TPU VM pod slice: create it (when its `accelerator` type is given), copy
  the repo, then start all workers at once (each runs
  jax.distributed.initialize(), which finds its peers on TPU)."""
  where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
  remote = ("cd ~/attnlab && ATTNLAB_ACCELERATOR=tpu ATTNLAB_DISTRIBUTED=1 "
            "./launch.sh train " + " ".join(shlex.quote(a) for a in train_args))
  create = []
  if accelerator:
    chip = tpu.parse_slice(accelerator).chip
    create = [["gcloud", "compute", "tpus", "tpu-vm", "create", name,
               f"--accelerator-type={accelerator}", f"--version={chip.runtime}", *where]]
  return create + [
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", ".",
       f"{name}:~/attnlab", "--worker=all", *where],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, "--worker=all",
       *where, f"--command={remote}"],
  ]
