"""Vision Transformer (Dosovitskiy et al. 2021): an image is a sequence of
p x p patches, linearly embedded, with a class token and position
embeddings, through the pre-norm encoder of attnlab/nn/blocks.py.

Variants by string, "B/16" = model size / patch size (Table 1):
  Ti 192 wide, 12 layers, MLP 768, 3 heads (Touvron et al. 2021, DeiT)
  S  384, 12, 1536, 6          B  768, 12, 3072, 12
  L  1024, 24, 4096, 16        H  1280, 32, 5120, 16

  __call__(images [B, H, W, C], train, return_weights) -> (logits [B, classes]
      or the pre-logits when num_classes is 0, aux) with aux["tokens"] (the
      encoder's output tokens [B, T, D], LayerNorm'd), aux["pre_logits"]
      [B, D] and, on request, aux["attention"] [B, layers, heads, T, T]

Images of another size than `image_size` (multi-crop, fine-tuning at a
higher resolution) get their position embeddings resized in 2-D
(`resize_posemb`), the class token's kept as it is.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnlab.nn import kernels
from attnlab.nn import blocks

VARIANTS = {  # width, depth, MLP, heads
    "Ti": (192, 12, 768, 3), "S": (384, 12, 1536, 6), "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12), "L": (1024, 24, 4096, 16), "H": (1280, 32, 5120, 16),
}


def parse_variant(variant):
  """"B/16" -> dict(width, depth, mlp_dim, num_heads, patch); ValueError
  (saying what exists) for anything else."""
  m = re.fullmatch(r"([A-Za-z]+)/(\d+)", variant or "")
  if not m or m.group(1) not in VARIANTS or int(m.group(2)) < 1:
    raise ValueError(f"unknown ViT variant {variant!r}: use SIZE/PATCH with SIZE one "
                     f"of {list(VARIANTS)} and a patch size, e.g. 'B/16'")
  width, depth, mlp_dim, heads = VARIANTS[m.group(1)]
  return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads,
              patch=int(m.group(2)))


def matmul_flops(model, channels, image_size=None):
  """Forward matmul FLOPs of one image (2 per multiply-add) of image_size
  (default model.image_size): the patch embedding, every layer over all
  tokens (blocks.layer_matmul_flops) and the head. XLA's count of a
  scanned encoder counts one layer."""
  patches = ((image_size or model.image_size) // model.patch) ** 2
  tokens = patches + (1 if model.pool == "tok" else 0)
  flops = 2 * model.patch ** 2 * channels * model.width * patches
  flops += model.depth * tokens * blocks.layer_matmul_flops(model.width, model.mlp_dim, tokens)
  features = model.width
  if model.representation_size:
    flops += 2 * model.width * model.representation_size
    features = model.representation_size
  return flops + 2 * features * model.num_classes


def sincos_2d(grid_h, grid_w, d):
  """Fixed 2-D positions [grid_h * grid_w, d]: the sinusoids of section 3.5
  of Vaswani et al. for the row in the first d/2 features and for the
  column in the last d/2."""
  y, x = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  return jnp.concatenate([blocks.sinusoidal_positions(jnp.asarray(y.ravel()), d // 2),
                          blocks.sinusoidal_positions(jnp.asarray(x.ravel()), d // 2)], -1)


def resize_posemb(posemb, new_grid, num_prefix):
  """Position embeddings [1, prefix + h * w, D] of an h x w grid -> those of
  `new_grid` (h', w'): the grid part resized bilinearly as a 2-D image, the
  `num_prefix` (class token) rows kept."""
  prefix, grid = posemb[:, :num_prefix], posemb[:, num_prefix:]
  side = int(round(np.sqrt(grid.shape[1])))
  old = (side, grid.shape[1] // side)
  if tuple(new_grid) == old:
    return posemb
  d = grid.shape[-1]
  grid = jax.image.resize(grid.reshape(1, *old, d), (1, *new_grid, d), "bilinear")
  return jnp.concatenate([prefix, grid.reshape(1, -1, d).astype(posemb.dtype)], 1)


class ViT(nn.Module):
  num_classes: int = 1000     # 0: no head (features only)
  width: int = 768
  depth: int = 12
  mlp_dim: int = 3072
  num_heads: int = 12
  patch: int = 16
  image_size: int = 224       # the grid the position embeddings are made for
  pool: str = "tok"           # "tok": the class token; "gap": mean of the patch tokens
  posemb: str = "learn"       # "learn" | "sincos2d" (fixed)
  representation_size: int = 0  # > 0: a tanh pre-logits layer (ViT's pretraining)
  dropout: float = 0.0
  attention_dropout: float = 0.0
  implementation: str = "xla"
  scan: bool = False
  remat: str = "none"
  drop_path: float = 0.0      # stochastic depth at the last layer (DeiT, DINO)
  head_bias: float = 0.0      # -6.9 with the sigmoid loss: each class starts at p = 1/1000
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train=False, return_weights=False):
    B, H, W, _ = images.shape
    if H % self.patch or W % self.patch:
      raise ValueError(f"image size {H} x {W} is not divisible by the patch size {self.patch}")
    # A p x p convolution with stride p: one linear map of each flattened patch.
    x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch, padding="VALID",
                dtype=self.dtype, name="embedding")(images)
    grid = x.shape[1:3]
    x = x.reshape(B, -1, self.width)
    prefix = 1 if self.pool == "tok" else 0
    if prefix:
      cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (B, 1, self.width)).astype(x.dtype), x], 1)
    side = self.image_size // self.patch
    if self.posemb == "learn":
      pos = self.param("pos_embedding", nn.initializers.normal(self.width ** -0.5),
                       (1, prefix + side * side, self.width))
      pos = resize_posemb(pos, grid, prefix)
    else:
      pos = sincos_2d(*grid, self.width)[None]
      pos = jnp.concatenate([jnp.zeros((1, prefix, self.width)), pos], 1)
    x = nn.Dropout(self.dropout)(x + pos.astype(x.dtype), deterministic=not train)
    stack = blocks.Stack(self.depth, self.num_heads, self.mlp_dim, prefix="encoderblock",
                         dropout=self.dropout, attention_dropout=self.attention_dropout,
                         pre_norm=True, activation="gelu", implementation=self.implementation,
                         scan=self.scan, remat=self.remat, drop_path=self.drop_path,
                         dtype=self.dtype, name="encoder")
    x, weights = stack(x, kernels.Mask(), train=train, return_weights=return_weights)
    x = nn.LayerNorm(epsilon=1e-6, name="encoder_norm")(x)
    pre_logits = x[:, 0] if prefix else jnp.mean(x, 1)
    if self.representation_size:
      pre_logits = jnp.tanh(nn.Dense(self.representation_size, name="pre_logits")(pre_logits))
    aux = {"tokens": x, "pre_logits": pre_logits}
    if return_weights:
      aux["attention"] = weights["self"]
    if not self.num_classes:
      return pre_logits, aux
    # The head starts at zero (section 3.1 and the released code).
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                      bias_init=nn.initializers.constant(self.head_bias), name="head")(
        pre_logits)
    return logits, aux
