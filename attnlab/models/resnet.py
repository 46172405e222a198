"""ResNet v1.5 (He et al. 2016; the stride of a bottleneck on its 3 x 3
convolution, as torchvision and the MLPerf reference): the convolutional
baseline of the ViT experiments.

Variants by depth: 18 and 34 (basic blocks), 50, 101, 152 (bottlenecks).
norm="batch": BatchNorm, whose running statistics are the model's
`batch_stats` collection (the trainer's model_state). Under jit over a
device mesh the batch mean and variance are over the GLOBAL batch (every
device and host), so the statistics do not depend on how the batch is
split. norm="group": BiT's GroupNorm (32 groups) + weight-standardised
convolutions (Kolesnikov et al. 2020), no batch statistics at all.
`small_inputs`: a 3 x 3 stride-1 stem without max-pooling, for 28-32 pixel
images (as for CIFAR in He et al., section 4.2).

Attention inside the CNN (attnlab/nn/vision.py):
  nonlocal_stages  a non-local block (Wang et al. 2018) after each of these
                   stages (1-based; Wang et al. put theirs in res3 and res4,
                   our stages 2 and 3), starting as the identity
  spatial="local"  every 3 x 3 convolution of the blocks becomes k x k local
                   self-attention (`local_kernel`, `local_heads`; a stride
                   of 2 becomes a 2 x 2 average pool after it, as
                   Ramachandran et al. 2019 downsample); the stem stays a
                   convolution. At depth 50 this is Ramachandran et al.'s
                   full-attention ResNet-50 with a convolutional stem (18.0
                   M parameters); the lectures' LR-Net-50 (Hu et al., 23.3
                   M) also widens the bottlenecks (docs/swin.md).

  __call__(images [B, H, W, C], train) -> (logits [B, classes], aux) with
      aux["pre_logits"] [B, C'] (global average pool) and aux["tokens"]
      [B, h * w, C'] (the last feature map as a sequence)
"""
import functools
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from attnlab.nn import vision

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
          152: ("bottleneck", (3, 8, 36, 3))}


def parse_variant(variant):
  """"50" (or "resnet50", "R50") -> depth; ValueError saying what exists."""
  digits = "".join(ch for ch in str(variant) if ch.isdigit())
  if not digits or int(digits) not in DEPTHS:
    raise ValueError(f"unknown ResNet variant {variant!r}: use one of {sorted(DEPTHS)}")
  return int(digits)


class StdConv(nn.Conv):
  """A convolution whose kernel is standardised per output channel (BiT)."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    if name == "kernel":
      mean = jnp.mean(value, axis=(0, 1, 2), keepdims=True)
      var = jnp.var(value, axis=(0, 1, 2), keepdims=True)
      value = (value - mean) / jnp.sqrt(var + 1e-10)
    return value


class Block(nn.Module):
  """A residual block: two 3 x 3 convolutions (basic) or 1x1-3x3-1x1 with a
  4x wider output (bottleneck); a projection shortcut when the shape changes.
  The last norm of the residual branch starts at zero (Goyal et al. 2017),
  so each block starts as the identity."""
  filters: int
  strides: int
  kind: str
  conv: nn.Module
  norm: nn.Module
  local: Optional[nn.Module] = None  # LocalSelfAttention in place of each 3 x 3 conv

  @nn.compact
  def __call__(self, x):
    out_filters = self.filters * (4 if self.kind == "bottleneck" else 1)

    def spatial(h, features, strides=1):
      if self.local is None:
        return self.conv(features, (3, 3), strides)(h)
      h, _ = self.local(features)(h)
      if strides == 1:
        return h
      # As a strided SAME convolution: ceil(side / 2), so odd maps (7 x 7) work.
      return nn.avg_pool(h, (strides, strides), (strides, strides), padding="SAME",
                         count_include_pad=False)

    if self.kind == "bottleneck":
      y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
      y = nn.relu(self.norm()(spatial(y, self.filters, self.strides)))
      y = self.norm(scale_init=nn.initializers.zeros)(self.conv(out_filters, (1, 1))(y))
    else:
      y = nn.relu(self.norm()(spatial(x, self.filters, self.strides)))
      y = self.norm(scale_init=nn.initializers.zeros)(spatial(y, out_filters))
    if x.shape[-1] != out_filters or self.strides != 1:
      x = self.norm(name="proj_norm")(
          self.conv(out_filters, (1, 1), self.strides, name="proj_conv")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  num_classes: int = 1000
  depth: int = 50
  width: int = 64
  norm: str = "batch"           # "batch" | "group"
  small_inputs: bool = False
  bn_momentum: float = 0.9
  nonlocal_stages: tuple = ()   # 1-based stages followed by a non-local block
  spatial: str = "conv"         # "conv" | "local": what the 3 x 3 convolutions are
  local_kernel: int = 7
  local_heads: int = 8
  local_unroll: bool = False  # LocalSelfAttention.unroll (for FLOP counts)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train=False, return_weights=False):
    del return_weights  # no attention here; the backbone API has the argument
    kind, stages = DEPTHS[self.depth]
    conv_cls = StdConv if self.norm == "group" else nn.Conv
    conv = functools.partial(conv_cls, use_bias=False, dtype=self.dtype, padding="SAME")
    if self.norm == "batch":
      norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                               momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype)
    else:
      norm = functools.partial(nn.GroupNorm, num_groups=32, epsilon=1e-5, dtype=self.dtype)
    if self.small_inputs:
      x = conv(self.width, (3, 3), name="stem_conv")(images)
      x = nn.relu(norm(name="stem_norm")(x))
    else:
      x = conv(self.width, (7, 7), 2, padding=[(3, 3), (3, 3)], name="stem_conv")(images)
      x = nn.relu(norm(name="stem_norm")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    local = None
    if self.spatial == "local":
      local = functools.partial(vision.LocalSelfAttention, num_heads=self.local_heads,
                                kernel=self.local_kernel, dtype=self.dtype,
                                unroll=self.local_unroll)
    for i, blocks in enumerate(stages):
      for j in range(blocks):
        x = Block(self.width * 2 ** i, 2 if i > 0 and j == 0 else 1, kind,
                  conv=conv, norm=norm, local=local, name=f"stage{i + 1}_block{j + 1}")(x)
      if i + 1 in self.nonlocal_stages:
        x, _ = vision.NonLocalBlock(norm, dtype=self.dtype, name=f"stage{i + 1}_nonlocal")(x)
    pre_logits = jnp.mean(x, axis=(1, 2))
    aux = {"pre_logits": pre_logits, "tokens": x.reshape(x.shape[0], -1, x.shape[-1])}
    if not self.num_classes:
      return pre_logits, aux
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pre_logits), aux
