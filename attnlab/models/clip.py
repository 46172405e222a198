"""CLIP (Radford et al. 2021): an image tower and a text tower, each ending in
a linear projection to one shared embedding space, L2-normalised, and a
learned temperature that scales their cosine similarities.

The image tower is attnlab/models/vit.py's ViT without a classifier (any
variant string; its class token's pre-logits are the image's features). The
text tower is the pre-norm Transformer stack of attnlab/nn/blocks.py
under a causal mask, as CLIP's: token + learned position embeddings, a
final LayerNorm, and the features of the end-of-text token (every text ends
with tokenizer.EOS; padding after it is never attended to by it, so padded
and unpadded texts have equal features).

  CLIP.__call__(images [B, H, W, C], tokens [B, L]) -> (image embeddings
      [B, E], text embeddings [B, E], {"log_scale"[, "bias"]})
  CLIP.encode_image / encode_text: one tower's normalised embeddings

With loss "softmax" (CLIP) the temperature's log starts at log(1 / 0.07);
with "sigmoid" (SigLIP; Zhai et al. 2023) at log(10), with a learned bias
starting at -10.
"""
import math

import flax.linen as nn
import jax.numpy as jnp

from attnlab.data import tokenizer
from attnlab.models import vit
from attnlab.nn import kernels
from attnlab.nn import blocks

# The text tower of CLIP's models (Table 19/20 of the paper): width, layers, heads.
TEXT_VARIANTS = {"S": (384, 12, 6), "B": (512, 12, 8), "L": (768, 12, 12)}


def normalize(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def end_of_text(tokens):
  """The position of each text's end-of-text token [B]."""
  return jnp.argmax(tokens == tokenizer.EOS, axis=1)


class TextTower(nn.Module):
  vocab_size: int
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  mlp_dim: int = 2048
  context: int = 77
  dropout: float = 0.0
  implementation: str = "xla"
  scan: bool = False
  remat: str = "none"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, train=False, return_weights=False):
    if tokens.shape[1] > self.context:
      raise ValueError(f"texts of {tokens.shape[1]} tokens exceed the context of {self.context}")
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 name="embed")(tokens)
    pos = self.param("pos_embedding", nn.initializers.normal(0.01), (self.context, self.width))
    x = (x + pos[:tokens.shape[1]]).astype(self.dtype)
    stack = blocks.Stack(self.depth, self.num_heads, self.mlp_dim, dropout=self.dropout,
                         pre_norm=True, activation="gelu", implementation=self.implementation,
                         scan=self.scan, remat=self.remat, dtype=self.dtype, name="encoder")
    x, weights = stack(x, kernels.Mask(causal=True), train=train, return_weights=return_weights)
    x = nn.LayerNorm(name="final_norm")(x)
    features = jnp.take_along_axis(x, end_of_text(tokens)[:, None, None], 1)[:, 0]
    aux = {"tokens": x}
    if return_weights:
      aux["attention"] = weights["self"]
    return features, aux


def matmul_flops(model, channels):
  """Forward matmul FLOPs of one pair: the image tower and its projection,
  the text tower over its whole context (blocks.layer_matmul_flops; the
  token embedding is a lookup) and its projection. The logits of a batch
  of B add 2 B^2 embed_dim."""
  text = model.text
  return (vit.matmul_flops(model.image, channels) + 2 * model.image.width * model.embed_dim
          + text.depth * text.context * blocks.layer_matmul_flops(text.width, text.mlp_dim,
                                                                  text.context)
          + 2 * text.width * model.embed_dim)


class CLIP(nn.Module):
  image: vit.ViT          # num_classes 0: features only
  text: TextTower
  embed_dim: int = 512
  loss: str = "softmax"   # "softmax" (CLIP) | "sigmoid" (SigLIP)

  def setup(self):
    self.image_projection = nn.Dense(self.embed_dim, use_bias=False)
    self.text_projection = nn.Dense(self.embed_dim, use_bias=False)
    start = math.log(1 / 0.07) if self.loss == "softmax" else math.log(10.0)
    self.log_scale = self.param("log_scale", nn.initializers.constant(start), ())
    if self.loss == "sigmoid":
      self.bias = self.param("bias", nn.initializers.constant(-10.0), ())

  def encode_image(self, images, train=False):
    features, _ = self.image(images, train=train)
    return normalize(self.image_projection(features).astype(jnp.float32))

  def encode_text(self, tokens, train=False):
    features, _ = self.text(tokens, train=train)
    return normalize(self.text_projection(features).astype(jnp.float32))

  def temperature(self):
    out = {"log_scale": self.log_scale}
    if self.loss == "sigmoid":
      out["bias"] = self.bias
    return out

  def __call__(self, images, tokens, train=False):
    return (self.encode_image(images, train), self.encode_text(tokens, train),
            self.temperature())
