"""Against open_clip's CLIP (open-clip-torch and torch on PYTHONPATH),
alternating windows in one process.
"""
import os
from attnlab import cost
from benchmarks.timing import FLOAT32, against_torch_peer, op_profile, synthetic_step, torch_op_profile


def clip_open_clip(variant="B/32", batch=8, rounds=5, window=1):
  """Training pairs/s of our CLIP step against open_clip's (open-clip-torch
  from PyPI, with torch and its dependencies on PYTHONPATH, installed for
  this benchmark only, imported here at run time): ViT-B/32 image tower at
  224 and the 12-layer, 512-wide text tower, context 77, vocabulary 49,408,
  random weights, batch 8, float32, one process. Theirs: create_model
  ("ViT-B-32"), ClipLoss, AdamW (b2 0.98, eps 1e-6, lr 5e-4, weight decay
  0.2 off gains and biases, as its train script) and the temperature
  clamp after the step. Ours: the trainer's step on configs/clip.py:laion
  with its layers unrolled and not rematerialised, as open_clip's.
  The same random images and token ids (each text ending in its
  end-of-text token), alternating windows; the figure is the median ratio.
  MFU from XLA's FLOPs of our step against a matmul peak measured here."""
  import functools
  import math
  import jax
  import numpy as np
  import open_clip
  import torch
  from open_clip.loss import ClipLoss
  from attnlab.data import tokenizer
  torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32)
  lengths = rng.integers(5, 77, batch)
  tokens = rng.integers(4, 49406, (batch, 77)).astype(np.int32)
  ours_tokens = np.where(np.arange(77) < lengths[:, None], tokens, 0)
  ours_tokens[np.arange(batch), lengths] = tokenizer.EOS  # EOS then padding
  theirs_tokens = np.where(np.arange(77) < lengths[:, None], tokens, 0)
  theirs_tokens[np.arange(batch), lengths] = 49407  # open_clip's end-of-text: the top id
  peak = cost.measured_peak_flops()

  ours, flops, count, _ = synthetic_step(
      "configs/clip.py:laion", [f"--config.model.variant={variant}",
                                f"--config.batch_size={batch}",
                                # as open_clip's step: layers unrolled, no remat
                                "--config.model.scan=False", "--config.model.remat=none",
                                *FLOAT32],
      {"image": jax.numpy.asarray(images), "tokens": jax.numpy.asarray(ours_tokens)})

  model = open_clip.create_model(f"ViT-{variant.replace('/', '-')}", pretrained=None)
  model.train()
  decay = [p for n, p in model.named_parameters()
           if p.ndim >= 2 and "bn" not in n and "ln" not in n and "logit_scale" not in n]
  rest = [p for n, p in model.named_parameters() if all(p is not q for q in decay)]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
  loss_fn = ClipLoss()
  pictures = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  texts = torch.from_numpy(theirs_tokens.astype(np.int64))

  def their_window(n):
    for _ in range(n):
      out = model(pictures, texts)
      if isinstance(out, dict):
        out = out["image_features"], out["text_features"], out["logit_scale"]
      loss = loss_fn(*out[:3])
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
  against_torch_peer(f"CLIP ViT-{variant} + 12 x 512 text tower, context 77, batch {batch}, "
                     f"float32, open_clip {open_clip.__version__}", ours, count, flops, peak,
                     "open_clip", their_window, model, "pairs", batch, window, rounds)
  print("\nour step, profiled:")
  op_profile(ours)
  print("\nopen_clip's step, profiled:")
  torch_op_profile(functools.partial(their_window, 1))
