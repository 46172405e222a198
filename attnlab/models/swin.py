"""Swin Transformer (Liu et al. 2021): a hierarchical Transformer whose
self-attention stays inside M x M windows of the feature map, the windows of
every second block shifted by M/2 so that information crosses window borders
(section 3.2), and whose stages halve the map by 2 x 2 patch merging.

Variants by string (section 3.3), width C, blocks per stage, heads per stage:
  T  96, (2, 2, 6, 2),  (3, 6, 12, 24)     S  96, (2, 2, 18, 2), (3, 6, 12, 24)
  B  128, (2, 2, 18, 2), (4, 8, 16, 32)    L  192, (2, 2, 18, 2), (6, 12, 24, 48)
Patches of 4 x 4 and windows of M = 7 at 224 x 224 (maps 56, 28, 14, 7).

  __call__(images [B, H, W, C], train) -> (logits [B, classes] or the
      pre-logits when num_classes is 0, aux) with aux["pre_logits"] [B, 8C]
      (the mean of the last stage's tokens) and aux["tokens"] [B, h * w, 8C]

An image size works when every stage's map is a multiple of the window
(`check_sizes` says which sizes do). A stage whose map is exactly one window
does not shift (a single window has no border to cross), as the paper's code.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from attnlab.nn import vision
from attnlab.nn import blocks

VARIANTS = {  # width, blocks per stage, heads per stage
    "T": (96, (2, 2, 6, 2), (3, 6, 12, 24)), "S": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "B": (128, (2, 2, 18, 2), (4, 8, 16, 32)), "L": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def parse_variant(variant):
  """"T" -> dict(width, depths, num_heads); ValueError saying what exists."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown Swin variant {variant!r}: use one of {list(VARIANTS)}")
  width, depths, heads = VARIANTS[variant]
  return dict(width=width, depths=depths, num_heads=heads)


def stage_sizes(image_size, patch, stages):
  """The side of each stage's feature map: image / patch, then halved."""
  return [image_size // patch // 2 ** i for i in range(stages)]


def check_sizes(image_size, patch, window, stages):
  """None when `image_size` works, else a sentence saying what is wrong and
  which image sizes work: every stage's map a multiple of the window."""
  step = patch * 2 ** (stages - 1) * window  # the last map is then one or more windows
  if image_size % patch:
    return f"image size {image_size} is not a multiple of the patch size {patch}"
  sides = stage_sizes(image_size, patch, stages)
  for i, side in enumerate(sides):
    if side < window:
      return (f"stage {i + 1}'s feature map ({side} x {side}) is smaller than the window "
              f"{window} x {window}; image sizes that work: multiples of {step}, "
              f"e.g. {step}, {2 * step}")
  for i, side in enumerate(sides):
    if side % window:
      problem = f"is not a multiple of the window {window}"
    elif i + 1 < stages and side % 2:
      problem = "is odd, so 2 x 2 patch merging cannot halve it"
    else:
      continue
    return (f"stage {i + 1}'s feature map ({side} x {side}) {problem}; image sizes that "
            f"work: multiples of {step}, e.g. {step}, {2 * step}")
  return None


def patch_merging_order(x):
  """[B, H, W, C] -> [B, H/2, W/2, 4C]: each 2 x 2 neighbourhood's features
  side by side, in the order of the paper's code ((0,0), (1,0), (0,1), (1,1)
  as (row, column)), so checkpoints converted from it line up."""
  B, H, W, C = x.shape
  x = x.reshape(B, H // 2, 2, W // 2, 2, C).transpose(0, 1, 3, 4, 2, 5)
  return x.reshape(B, H // 2, W // 2, 4 * C)


class PatchMerging(nn.Module):
  """2 x 2 neighbours concatenated (4C), LayerNorm, a linear map to 2C
  (section 3.1): half the resolution, twice the width."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(patch_merging_order(x))
    return nn.Dense(x.shape[-1] // 2, use_bias=False, dtype=self.dtype, name="reduction")(x)


class SwinBlock(nn.Module):
  """x + (S)W-MSA(LN(x)), then x + MLP(LN(x)) (eq. 3), each branch under
  stochastic depth at rate `drop_path`."""
  num_heads: int
  window: int
  shift: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  implementation: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="attention_norm")(x)
    h, _ = vision.WindowAttention(self.num_heads, self.window, self.shift,
                               implementation=self.implementation, dtype=self.dtype,
                               name="attention")(h)
    x = x + blocks.drop_path(self, h, self.drop_path, train)
    h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="mlp_norm")(x)
    h = blocks.FeedForward(int(x.shape[-1] * self.mlp_ratio), "gelu", self.dtype, name="mlp")(h)
    return x + blocks.drop_path(self, h, self.drop_path, train)


class Swin(nn.Module):
  num_classes: int = 1000
  width: int = 96
  depths: tuple = (2, 2, 6, 2)
  num_heads: tuple = (3, 6, 12, 24)
  patch: int = 4
  window: int = 7
  mlp_ratio: float = 4.0
  drop_path: float = 0.2      # stochastic depth at the last block (Swin-T's 0.2)
  implementation: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train=False, return_weights=False):
    del return_weights  # window attention has no class-token map to draw
    problem = check_sizes(images.shape[1], self.patch, self.window, len(self.depths))
    if problem or images.shape[1] != images.shape[2]:
      raise ValueError(problem or f"Swin takes square images, not {images.shape[1:3]}")
    # Patch partition + linear embedding: one p x p convolution of stride p.
    x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch, padding="VALID",
                dtype=self.dtype, name="embedding")(images)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="embedding_norm")(x)
    rates = np.linspace(0.0, self.drop_path, sum(self.depths))  # 0 at the first block
    n = 0
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      if i:
        x = PatchMerging(self.dtype, name=f"merge{i}")(x)
      one_window = x.shape[1] == self.window
      for j in range(depth):
        shift = self.window // 2 if j % 2 and not one_window else 0
        x = SwinBlock(heads, self.window, shift, self.mlp_ratio, float(rates[n]),
                      self.implementation, self.dtype, name=f"stage{i + 1}_block{j + 1}")(
            x, train)
        n += 1
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
    tokens = x.reshape(x.shape[0], -1, x.shape[-1])
    pre_logits = jnp.mean(tokens, 1)
    aux = {"tokens": tokens, "pre_logits": pre_logits}
    if not self.num_classes:
      return pre_logits, aux
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pre_logits), aux

