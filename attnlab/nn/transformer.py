"""Transformer blocks (Vaswani et al. 2017, section 3): sinusoidal positions,
the position-wise feed-forward network, and one layer that is an encoder
layer, a decoder layer (masked self-attention + encoder-decoder attention)
or a decoder-only (GPT) layer. Post-norm as in the paper, pre-norm
(LayerNorm inside the residual branch) as an option.

Decoding keeps, per layer, a key/value cache of the tokens so far: a new
token projects only its own key and value and attends over the cache, so
its attention work does not grow with recomputation of the prefix.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from attnlab.nn import attention as att


def sinusoidal_positions(positions, d):
  """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
  (section 3.5) for integer positions [..., T] -> [..., T, d]."""
  i = np.arange(d // 2)
  freq = jnp.asarray(1.0 / 10000 ** (2 * i / d), jnp.float32)
  angle = positions[..., None].astype(jnp.float32) * freq
  return jnp.stack([jnp.sin(angle), jnp.cos(angle)], -1).reshape(*angle.shape[:-1], d)


ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu}  # paper; BERT and GPT


class FeedForward(nn.Module):
  """FFN(x) = max(0, x W1 + b1) W2 + b2 (eq. 2), or with GELU."""
  d_ff: int
  activation: str = "relu"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = ACTIVATIONS[self.activation](nn.Dense(self.d_ff, dtype=self.dtype, name="wi")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="wo")(h)


class Layer(nn.Module):
  """Self-attention (+ encoder-decoder attention when `cross`) + FFN, each
  sub-layer wrapped as LayerNorm(x + Dropout(f(x))) (post-norm, the paper)
  or x + Dropout(f(LayerNorm(x))) (pre-norm)."""
  num_heads: int
  d_ff: int
  cross: bool = False
  dropout: float = 0.1
  attention_dropout: float = 0.0
  pre_norm: bool = False
  activation: str = "relu"
  implementation: str = "xla"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    mha = lambda name: att.MultiHeadAttention(
        self.num_heads, implementation=self.implementation,
        dropout_rate=self.attention_dropout, dtype=self.dtype, name=name)
    self.self_attention = mha("self_attention")
    if self.cross:
      self.cross_attention = mha("cross_attention")
    self.ffn = FeedForward(self.d_ff, self.activation, self.dtype, name="ffn")
    names = ["self_norm"] + (["cross_norm"] if self.cross else []) + ["ffn_norm"]
    self.norms = {n: nn.LayerNorm(name=n) for n in names}
    self.drop = nn.Dropout(self.dropout)

  def _sublayer(self, name, fn, x, train):
    if self.pre_norm:
      return x + self.drop(fn(self.norms[name](x)), deterministic=not train)
    return self.norms[name](x + self.drop(fn(x), deterministic=not train))

  def __call__(self, x, mask, memory=None, cross_mask=None, *, train=False,
               return_weights=False, cache=None, cross_kv=None):
    """x [B, T, D]. `memory` [B, S, D] (or `cross_kv`, its projected keys
    and values) for the encoder-decoder attention. With `cache` = {"k", "v"
    [B, L, H, Dh], "index" [B]}, x holds the next T tokens of each row,
    written at `index`; returns (y, cross weights or None, new cache)."""
    new_cache = None

    def self_attend(h):
      nonlocal new_cache
      if cache is None:
        return self.self_attention(h, mask=mask, train=train)[0]
      k, v = self.self_attention.project_kv(h)
      rows = jnp.arange(h.shape[0])[:, None]
      cols = cache["index"][:, None] + jnp.arange(h.shape[1])[None]
      new_cache = {"k": cache["k"].at[rows, cols].set(k),
                   "v": cache["v"].at[rows, cols].set(v),
                   "index": cache["index"] + h.shape[1]}
      causal = att.Mask(causal=True, q_offset=cache["index"][0])
      return self.self_attention(h, mask=causal, kv=(new_cache["k"], new_cache["v"]),
                                 train=train)[0]

    x = self._sublayer("self_norm", self_attend, x, train)
    weights = None
    if self.cross:
      def cross_attend(h):
        nonlocal weights
        out, weights = self.cross_attention(h, memory, cross_mask, kv=cross_kv,
                                            train=train, return_weights=return_weights)
        return out
      x = self._sublayer("cross_norm", cross_attend, x, train)
    x = self._sublayer("ffn_norm", self.ffn, x, train)
    return x, weights, new_cache


def layer_matmul_flops(d_model, d_ff, context):
  """Forward matmul FLOPs per token of a self-attention + FFN layer (2 per
  multiply-add): q k v o projections, the FFN, and scores and contexts
  over `context` keys (computed in full, masks and all)."""
  return 4 * 2 * d_model ** 2 + 2 * 2 * d_model * d_ff + 2 * 2 * context * d_model


def empty_cache(batch, length, num_heads, head_dim, dtype=jnp.float32):
  """A layer's key/value cache for `length` tokens, nothing written yet."""
  shape = (batch, length, num_heads, head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "index": jnp.zeros((batch,), jnp.int32)}
