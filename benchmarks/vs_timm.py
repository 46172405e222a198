"""Against timm's Swin (timm and torch on PYTHONPATH), alternating windows in
one process.
"""
import os
from attnlab import cost
from benchmarks import peers
from benchmarks.timing import FLOAT32, against_torch_peer, synthetic_step


def timm_swin(variant="T", batch=8, rounds=5, window=1):
  """Training images/s of our Swin step against timm's (timm and torch on
  PYTHONPATH, installed for this benchmark only, imported here at run
  time): Swin-T at 224 x 224, batch 8, float32, random weights, one
  process. Theirs: timm.create_model("swin_tiny_patch4_window7_224",
  drop_path_rate=0.2), label-smoothed cross-entropy (0.1), AdamW (lr 1e-3,
  weight decay 0.05 off biases, norms and the bias tables, as the Swin
  recipe) and clipping at 5. Ours: the trainer's step on
  configs/swin.py:i1k (the same recipe). The same random images and labels,
  alternating windows; the figure is the median ratio. MFU from XLA's FLOPs
  of our step against a matmul peak measured here."""
  import jax
  import numpy as np
  peers.torchvision_stand_in()
  import timm
  import torch
  torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, batch).astype(np.int32)
  peak = cost.measured_peak_flops()
  ours, flops, count, _ = synthetic_step(
      f"configs/swin.py:i1k,variant={variant}", [f"--config.batch_size={batch}", *FLOAT32],
      {"image": jax.numpy.asarray(images), "label": jax.numpy.asarray(labels)})

  name = {"T": "swin_tiny_patch4_window7_224", "S": "swin_small_patch4_window7_224",
          "B": "swin_base_patch4_window7_224"}[variant]
  model = timm.create_model(name, drop_path_rate={"T": 0.2, "S": 0.3, "B": 0.5}[variant])
  model.train()
  decay = [p for n, p in model.named_parameters()
           if p.ndim > 1 and "relative_position_bias_table" not in n]
  rest = [p for n, p in model.named_parameters() if all(p is not q for q in decay)]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                 {"params": rest, "weight_decay": 0.0}], lr=1e-3)
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
  pictures = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  targets = torch.from_numpy(labels.astype(np.int64))

  def their_window(n):
    for _ in range(n):
      loss = loss_fn(model(pictures), targets)
      optimizer.zero_grad()
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
      optimizer.step()
  against_torch_peer(f"Swin-{variant} at 224 x 224, batch {batch}, float32, 1000 classes, "
                     f"timm {timm.__version__}", ours, count, flops, peak, "timm",
                     their_window, model, "images", batch, window, rounds)
