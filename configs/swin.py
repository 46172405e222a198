"""Swin Transformer (Liu et al. 2021) image classification: the data,
pipeline, loss and evaluation of configs/vit.py, a hierarchical backbone of
shifted-window attention.

  ./launch.sh train configs/swin.py:fmnist --workdir runs/swin_fmnist
  ./launch.sh train configs/swin.py:i1k,variant=T --workdir gs://BUCKET/swin_t
  ./launch.sh compile configs/swin.py:i1k,variant=T --tpu v5e-64    (its slice: TPU v5e, 64 chips)

Variants (first arg as in configs/vit.py: fmnist, emoji, folder, i1k; then
variant=T|S|B|L, steps=N, runlocal=True):
  fmnist  embedded: 28 x 28 Fashion-MNIST, patches of 2 (a 14 x 14 map),
          windows of 7, two stages (2 and 4 blocks, 48 then 96 wide, 2
          and 4 heads; 0.5 M parameters), otherwise configs/vit.py:fmnist's
          recipe (AdamW 1e-3, batch 128, flips).
  emoji / folder  the same at 32 x 32 with windows of 8 (maps 16 and 8).
  i1k     the paper's ImageNet-1k recipe (section 4.1, appendix A2.1):
          224 x 224, AdamW lr 1e-3, weight decay 0.05 (not on biases and
          norms), batch 1024, 300 epochs with 20 warm-up epochs and cosine
          decay, gradient clipping at 5, label smoothing 0.1, RandAugment
          (2, 9), mixup 0.8, stochastic depth 0.2 / 0.3 / 0.5 for T / S /
          B. The paper also uses CutMix and random erasing, which the
          pipeline does not have. Expected (Table 1a, 224^2): Swin-T 81.3%,
          Swin-S 83.0%, Swin-B 83.5% ImageNet top-1. Needs imagenet2012
          prepared as a tfds dataset.
"""
from attnlab.config import for_pods, parse_arg, parse_variant
from configs import vit as vit_config

STEPS = {"fmnist": 800, "emoji": 600, "folder": 800, "i1k": 300 * 1251}
DROP_PATH = {"T": 0.2, "S": 0.3, "B": 0.5, "L": 0.5}


def get_config(arg=None):
  task, rest = parse_variant(arg, STEPS, "fmnist")
  opts = parse_arg(rest, variant="T", steps=0, runlocal=False)
  c = vit_config.get_config(f"{task},steps={opts.steps or STEPS[task]},"
                            f"runlocal={opts.runlocal}")
  for key in ("num_heads", "mlp_dim", "depth", "pool", "posemb", "representation_size",
              "scan", "remat", "head_bias", "dropout", "attention_dropout"):
    del c.model[key]  # ViT's, not Swin's
  c.model.update(name="swin", variant=opts.variant, width=0, depths=(), num_heads=(),
                 patch=4, window=7, drop_path=DROP_PATH.get(opts.variant, 0.2))
  if task == "i1k":
    # Data parallel: split and gathered once per step (`config.for_pods`,
    # the ViT recipe's) the TPU compiler estimated 25.24 ms per step on
    # v5e-64 against 25.06 (its windows' small matmuls dominate either way).
    for_pods(c, split=False)
    c.batch_size = 1024
    c.loss, c.label_smoothing = "softmax", 0.1
    c.data.update(mixup=0.8, pp_train="decode|inception_crop(224)|flip_lr|randaug(2, 9)|"
                                      "value_range(-1, 1)")
    c.optim.update(lr=1e-3, weight_decay=0.05, warmup_steps=20 * 1251, clip_norm=5.0,
                   wd_mults=(("(.*/)?(bias|scale|table)", 0.0),))
  else:  # the embedded variants of configs/vit.py, at their image size
    window = 7 if c.model.image_size == 28 else 8
    c.model.update(width=48, depths=(2, 4), num_heads=(2, 4), patch=2, window=window,
                   drop_path=0.0)
  if opts.runlocal:
    c.model.update(width=8, depths=(1, 1), num_heads=(1, 2))
  return c
