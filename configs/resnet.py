"""ResNet v1.5 baselines for the ViT experiments: the same data, pipeline,
loss and evaluation as configs/vit.py, a convolutional backbone.

  ./launch.sh train configs/resnet.py:fmnist --workdir runs/resnet_fmnist
  ./launch.sh train configs/resnet.py:i1k,variant=50 --workdir gs://BUCKET/r50
  ./launch.sh compile configs/resnet.py:i1k,variant=50 --tpu v5e-64   (its slice)

Variants (first arg as in configs/vit.py: fmnist, emoji, folder, i1k; then
variant=18|34|50|101|152, norm=batch|group, attention=none|nonlocal|local,
steps=N, runlocal=True):
  fmnist / emoji / folder  ResNet-18 with the small-image stem (3 x 3, stride 1, no
          max-pool), 16 channels wide (the width of He et al.'s CIFAR
          ResNets; 0.7 M parameters, about the FLOPs of the embedded ViT),
          BatchNorm, otherwise as configs/vit.py.
  i1k     ResNet-50 (25.6 M parameters) as Goyal et al. (2017) train it:
          SGD momentum 0.9, lr 0.1 x batch / 256 (0.4 at batch 1024), 5
          warm-up epochs, 90 epochs (112,590 steps), weight decay 1e-4 (not
          on BatchNorm or biases), here with cosine decay and label
          smoothing 0.1. Expected about 76-77% ImageNet top-1 (He et al.
          report 75.3% for v1 with 10 crops; v1.5 with this recipe is
          usually quoted at 76.1-76.9%). Runtime: about 7 hours on a v3-8.
norm=group: BiT's GroupNorm + weight standardisation, no batch statistics
(so gradient accumulation is allowed).
attention=nonlocal: non-local blocks (Wang et al. 2018, embedded Gaussian)
          after stages 2 and 3, each starting as the identity.
attention=local: every 3 x 3 convolution of the blocks becomes 7 x 7 local
          self-attention (Ramachandran et al. 2019), 4 heads in the embedded
          variants, 8 at i1k (at depth 50 Ramachandran et al.'s
          full-attention ResNet-50, 18.0 M parameters; `./launch.sh tables
          vision`).
"""
from attnlab.config import ConfigError, for_pods, parse_arg, parse_variant
from configs import vit as vit_config

STEPS = {"fmnist": 800, "emoji": 600, "folder": 800, "i1k": 112_590}


def get_config(arg=None):
  task, rest = parse_variant(arg, STEPS, "fmnist")
  opts = parse_arg(rest, variant="", norm="batch", attention="none", steps=0,
                   runlocal=False)
  if opts.attention not in ("none", "nonlocal", "local"):
    raise ConfigError("arg.attention", f"unknown attention {opts.attention!r}",
                      "use none, nonlocal or local")
  c = vit_config.get_config(f"{task},steps={opts.steps or STEPS[task]},"
                            f"runlocal={opts.runlocal}")
  c.model.update(name="resnet", variant=opts.variant or ("50" if task == "i1k" else "18"),
                 norm=opts.norm, small_inputs=task != "i1k",
                 width=16 if task != "i1k" else 64, depth=0, mlp_dim=0, num_heads=0,
                 nonlocal_stages=(2, 3) if opts.attention == "nonlocal" else (),
                 spatial="local" if opts.attention == "local" else "conv",
                 local_kernel=7, local_heads=8 if task == "i1k" else 4)
  if task == "i1k":
    # Data parallel: 25.6 M parameters make a small optimizer update, and
    # with bfloat16 kernels gathered (`config.for_pods`) the stem
    # convolution's weight gradient took 6.9 ms of a 14.8 ms step on the TPU
    # compiler's estimate (7.99 ms in all without; the gather's first
    # version, which split the gradients after taking them).
    for_pods(c, split=False)
    c.batch_size = 1024
    c.loss, c.label_smoothing = "softmax", 0.1
    c.data.mixup = 0.0
    c.optim.update(name="sgd", lr=0.4, b1=0.9, weight_decay=1e-4, clip_norm=0.0,
                   warmup_steps=5 * 1251, schedule="cosine",
                   wd_mults=(("(.*/)?(bias|scale)", 0.0),))
  if opts.runlocal:
    c.model.update(variant="18", width=8, local_kernel=3, local_heads=2)
  return c
