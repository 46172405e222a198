"""Multi-head attention (Vaswani et al. 2017, section 3.2.2): the projections
to heads around a kernel of `attnlab.nn.kernels`, and one decoding step's
attention over a key/value cache.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab.nn.kernels import dot_product_attention
from attnlab.nn.scores import NEG_INF


class MultiHeadAttention(nn.Module):
  """Multi-head attention (Vaswani et al. 2017, section 3.2.2).

  Parameters are laid out as in flax's `nn.MultiHeadDotProductAttention`
  (query/key/value [D, H, D/H], out [H, D/H, D]), so the two modules agree
  given the same parameters. Returns (out [B, Tq, D], weights or None).

  Decoding passes `kv=(k, v)` [B, Tk, H, D/H] instead of `x_kv`: keys and
  values projected once (`project_kv`) and kept, for a cache of the tokens
  so far or the encoder output, so a new token costs one projection.
  `dropout_rate` drops attention weights in training (it takes the naive
  path, the only one that materialises them).
  """
  num_heads: int
  features: Optional[int] = None
  implementation: str = "xla"
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_q, x_kv=None, mask=None, *, kv=None, bias=None,
               return_weights=False, train=False, attention=None):
    """`attention(q, k, v) -> (out [B, Tq, H, D/H], weights or None)`
    replaces the attention between the projections (decoding over a
    cache: cache_attention)."""
    if kv is None and x_kv is None:  # self-attention
      q, k, v = self._project(("query", "key", "value"), x_q)
    else:
      q, = self._project(("query",), x_q)
      k, v = kv if kv is not None else self.project_kv(x_kv)
    if attention is not None:
      out, weights = attention(q, k, v)
    elif train and self.dropout_rate > 0:
      out, weights = dot_product_attention(q, k, v, mask, bias=bias, return_weights=True)
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    else:
      result = dot_product_attention(q, k, v, mask, bias=bias,
                                     implementation=self.implementation,
                                     return_weights=return_weights)
      out, weights = result if return_weights else (result, None)
    out = nn.DenseGeneral(x_q.shape[-1], axis=(-2, -1), dtype=self.dtype,
                          name="out")(out)
    return out, (weights if return_weights else None)

  @nn.compact
  def project_kv(self, x_kv):
    return self._project(("key", "value"), x_kv)

  def _project(self, names, x):
    # One matmul each. Fused into one against the kernels side by side, the
    # step was slower on a 2-core CPU (0.93x) and in the TPU compiler's
    # estimate (ViT-B/16 on v5e-4: 18.98 against 17.57 ms).
    features = self.features or x.shape[-1]
    return [nn.DenseGeneral((self.num_heads, features // self.num_heads), dtype=self.dtype,
                            name=name)(x) for name in names]


def cache_attention(q, k, v, visible, return_weights=False):
  """One decoding step's attention over a key/value cache kept head-major,
  k and v [N, H, L, Dh], so that the step's matmuls read it as it lies (the
  [N, L, H, Dh] layout of training gets copied into this one at every
  step, the cost of a whole cache). q [N, T, H, Dh] -> (out [N, T, H, Dh],
  weights [N, H, T, L] when asked and beam = 1, else None).

  The N rows are B groups of `beam` (= visible.shape[2]) rows; the queries
  of a group see the keys of all its rows: visible [B, beam * T, beam, L]
  says which (query (row, t), key (row, position)) pairs count. beam = 1 is
  a plain cache (visible: positions written so far); beam > 1 is beam
  search's hypotheses over the cache slots of their ancestors
  (blocks.Stack.decode), beam times the FLOPs of a cache that is
  reordered instead, but no copy of it."""
  N, T, H, Dh = q.shape
  B, I, beam, L = visible.shape
  if beam == 1:  # the same, in fewer ops (greedy decoding is all small ops)
    scores = jnp.einsum("nthd,nhld->nhtl", q, k, preferred_element_type=jnp.float32)
    mask = visible[:, None, :, 0]  # [N, 1, T, L]
    weights = jax.nn.softmax(jnp.where(mask, scores / Dh ** 0.5, NEG_INF), axis=-1) * mask
    out = jnp.einsum("nhtl,nhld->nthd", weights.astype(v.dtype), v)
    return out, (weights if return_weights else None)
  # Row (b, p) gets every query of its group: [N, H, I, Dh], a few kB.
  qs = q.reshape(B, 1, I, H, Dh).transpose(0, 1, 3, 2, 4)
  qs = jnp.broadcast_to(qs, (B, beam, H, I, Dh)).reshape(N, H, I, Dh)
  scores = jnp.einsum("nhid,nhld->nhil", qs, k, preferred_element_type=jnp.float32)
  scores = (scores / Dh ** 0.5).reshape(B, beam, H, I, L)
  mask = visible.transpose(0, 2, 1, 3)[:, :, None]  # [B, beam, 1, I, L]
  scores = jnp.where(mask, scores, NEG_INF)
  weights = jnp.exp(scores - scores.max(axis=(1, 4), keepdims=True)) * mask
  weights = weights / weights.sum(axis=(1, 4), keepdims=True)  # over (row, position)
  out = jnp.einsum("nhil,nhld->nhid", weights.reshape(N, H, I, L).astype(v.dtype), v)
  out = out.reshape(B, beam, H, I, Dh).sum(1)  # [B, H, I, Dh]
  out = out.transpose(0, 2, 1, 3).reshape(N, T, H, Dh)
  return out, (weights.reshape(N, H, T, L) if return_weights and beam == 1 else None)
