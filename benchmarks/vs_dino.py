"""Against the authors' PyTorch DINO (a checkout; torch on PYTHONPATH),
alternating windows in one process.
"""
import os
import sys
from attnlab import cost
from benchmarks import peers
from benchmarks.timing import FLOAT32, against_torch_peer, op_profile, synthetic_step


def dino_torch(dino_dir, variant="S/16", batch=8, local_crops=6, rounds=5, window=1):
  """Training images/s of our DINO step against the authors' PyTorch DINO
  (DINO_DIR = a checkout of facebookresearch/dino, fetched, never
  committed; torch importable, installed for this benchmark only): ViT-S/16,
  2 x 224 global + `local_crops` x 96 local crops, batch 8, float32, one
  process. Theirs: its vision_transformer (drop path 0.1), DINOHead (65,536
  outputs, learned last-layer norm, as configs/dino.py:i1k),
  MultiCropWrapper, DINOLoss, AdamW on get_params_groups, clip_gradients(3),
  cancel_gradients_last_layer and the teacher's EMA: the body of its
  train_one_epoch without CUDA. Ours: the trainer's step on
  configs/dino.py:i1k. Same random images, alternating windows; the figure
  is the median ratio. MFU from XLA's FLOPs of our step (both do the same
  arithmetic) against a matmul peak measured in this run."""
  import numpy as np
  import torch
  import torch.distributed as dist

  if not os.path.exists(os.path.join(dino_dir, "main_dino.py")):
    sys.exit(f"{dino_dir} has no main_dino.py: pass the root of a "
             "facebookresearch/dino checkout")
  # main_dino imports torchvision for its data loading and ResNet archs
  # (unused here): stand-ins unless torchvision is installed.
  peers.torchvision_stand_in()
  sys.path.insert(0, dino_dir)
  import main_dino
  import utils as dino_utils
  import vision_transformer as vits
  # DINOLoss all-reduces its centre: a one-process group.
  if not dist.is_initialized():
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
  torch.set_num_threads(os.cpu_count())

  rng = np.random.default_rng(0)
  glob = rng.uniform(-1, 1, (batch, 2, 224, 224, 3)).astype(np.float32)
  local = rng.uniform(-1, 1, (batch, local_crops, 96, 96, 3)).astype(np.float32)
  peak = cost.measured_peak_flops()

  # Ours: the trainer's own step on configs/dino.py:i1k.
  spec = f"configs/dino.py:i1k,variant={variant}"
  ours, flops, count, config = synthetic_step(
      spec, [f"--config.batch_size={batch}", f"--config.dino.local_crops={local_crops}",
             *FLOAT32],
      {"global": glob, "local": local})

  # Theirs, as main_dino.train_dino builds it and train_one_epoch steps it.
  m, d, o = config.model, config.dino, config.optim
  arch = {"Ti": "vit_tiny", "S": "vit_small", "B": "vit_base"}[variant.split("/")[0]]
  patch = int(variant.split("/")[1])
  head = lambda: vits.DINOHead(vits.__dict__[arch]().embed_dim, m.out_dim,
                               norm_last_layer=m.norm_last_layer,
                               hidden_dim=m.head_hidden, bottleneck_dim=m.bottleneck)
  student = dino_utils.MultiCropWrapper(
      vits.__dict__[arch](patch_size=patch, drop_path_rate=m.drop_path), head())
  teacher = dino_utils.MultiCropWrapper(vits.__dict__[arch](patch_size=patch), head())
  teacher.load_state_dict(student.state_dict())
  for p in teacher.parameters():
    p.requires_grad = False
  loss_fn = main_dino.DINOLoss(m.out_dim, local_crops + 2, d.warmup_teacher_temp,
                               d.teacher_temp, 30, 100, d.student_temp, d.center_momentum)
  optimizer = torch.optim.AdamW(dino_utils.get_params_groups(student))
  views = ([torch.from_numpy(np.ascontiguousarray(glob[:, i].transpose(0, 3, 1, 2)))
            for i in range(2)] +
           [torch.from_numpy(np.ascontiguousarray(local[:, i].transpose(0, 3, 1, 2)))
            for i in range(local_crops)])

  def their_step():
    for i, group in enumerate(optimizer.param_groups):
      group["lr"] = o.lr
      if i == 0:
        group["weight_decay"] = o.weight_decay
    teacher_output = teacher(views[:2])
    loss = loss_fn(student(views), teacher_output, 0)
    optimizer.zero_grad()
    loss.backward()
    dino_utils.clip_gradients(student, o.clip_norm)
    dino_utils.cancel_gradients_last_layer(0, student, d.freeze_last_layer_epochs)
    optimizer.step()
    with torch.no_grad():
      momentum = d.momentum_teacher
      for q, k in zip(student.parameters(), teacher.parameters()):
        k.data.mul_(momentum).add_((1 - momentum) * q.detach().data)
    return loss.item()

  def their_window(n):
    for _ in range(n):
      their_step()
  against_torch_peer(f"DINO {variant}: 2 x 224 + {local_crops} x 96 crops, batch {batch}, "
                     f"float32, {m.out_dim:,} outputs", ours, count, flops, peak,
                     "PyTorch DINO", their_window, student, "images", batch, window, rounds)
  print("\nour step, profiled:")
  op_profile(ours)
