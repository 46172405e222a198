"""Decoder-only causal language model (GPT; Radford et al. 2018, 2019) from
the Transformer's blocks: token + learned position embeddings, masked
self-attention layers, output tied to the token embedding. GPT-2 puts the
LayerNorm first in each sub-layer and once more at the end (pre_norm).

  __call__(tokens [B, T]) -> (logits [B, T, V], aux); with return_weights
      aux["self_attention"] is every layer's [B, layers, H, T, T]
  initial_state(batch, max_len) -> key/value caches; grow_state(state, max_len)
  decode_step(state, token [B]) -> (state, logits [B, V])
"""
import flax.linen as nn
import jax.numpy as jnp

from attnlab.nn import kernels
from attnlab.nn import blocks


class GPT(nn.Module):
  vocab_size: int
  d_model: int = 768
  num_heads: int = 12
  d_ff: int = 3072
  num_layers: int = 12
  max_len: int = 1024
  dropout: float = 0.1
  pre_norm: bool = True
  implementation: str = "xla"
  scan: bool = False          # nn.scan over the layers
  remat: str = "none"         # blocks.REMAT_POLICIES
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.d_model, name="embed",
                          embedding_init=nn.initializers.normal(0.02))
    self.pos_embed = nn.Embed(self.max_len, self.d_model, name="pos_embed",
                              embedding_init=nn.initializers.normal(0.01))
    self.layers = blocks.Stack(self.num_layers, self.num_heads, self.d_ff,
                               dropout=self.dropout, pre_norm=self.pre_norm,
                               activation="gelu", implementation=self.implementation,
                               scan=self.scan, remat=self.remat, dtype=self.dtype)
    nn.share_scope(self, self.layers)  # parameters stay layer_{i}/...
    if self.pre_norm:
      self.final_norm = nn.LayerNorm(name="final_norm")
    self.drop = nn.Dropout(self.dropout)

  def _embed(self, tokens, positions, train):
    x = self.embed(tokens) + self.pos_embed(positions)
    return self.drop(x, deterministic=not train)

  def _out(self, x):
    return self.embed.attend(self.final_norm(x) if self.pre_norm else x)

  def __call__(self, tokens, train=False, segments=None, positions=None,
               return_weights=False):
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    mask = kernels.Mask(causal=True, q_segments=segments, kv_segments=segments)
    x = self._embed(tokens, positions, train)
    x, weights = self.layers(x, mask, train=train, return_weights=return_weights)
    return self._out(x), ({"self_attention": weights["self"]} if return_weights else {})

  def initial_state(self, batch, max_len):
    return self.layers.empty_cache(batch, max_len, self.d_model)

  grow_state = staticmethod(blocks.grow_cache)  # room for more tokens (decode.py)

  def decode_step(self, state, token, train=False):
    x = self._embed(token[:, None], state["index"][:, None], train)
    x, _, state = self.layers.decode(x, state, train=train)
    return state, self._out(x)[:, 0]
