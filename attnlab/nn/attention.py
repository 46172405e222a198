"""Attention: every variant of the lectures, one calling convention.

Single-head scores of the RNN era take q [B, Tq, Dq] and k [B, Tk, Dk] and
return scores [B, Tq, Tk]:
  dot_score         q . k                          (Luong "dot")
  scaled_dot_score  q . k / sqrt(d)                (Vaswani et al. 2017)
  BilinearScore     q^T W k                        (Luong "general")
  AdditiveScore     v^T tanh(W q + U k)            (Bahdanau et al. 2015; Luong "concat")
`attend(scores, values, mask)` turns scores into weights and a context.

Multi-head attention takes q [B, Tq, H, D], k and v [B, Tk, H, D] and a
structured `Mask` (padding, causal, a local window, packed segments), so
that the memory-efficient implementation never builds a [Tq, Tk] mask:
  "naive"    einsum + softmax; can return the weights
  "xla"      jax.nn.dot_product_attention (the fast path)
  "chunked"  blocks of queries and keys with an online softmax (Rabe &
             Staats 2021; Dao et al. 2022) and a recomputing backward pass:
             O(n) memory for forward and gradients
An additive `bias` (a relative position bias) goes to the naive and xla paths.

Swin's 2-D windows are the same call on windows of a feature map:
`window_partition`, a `RelativePositionBias` and, for shifted windows,
`Mask` segments from `shifted_window_regions` (`WindowAttention`).

Attention inside CNNs works on feature maps [B, H, W, C]: `NonLocalBlock`
(every position to every position, Wang et al. 2018) and
`LocalSelfAttention` (each pixel to its k x k neighbourhood, in place of a
convolution; Ramachandran et al. 2019, Hu et al. 2019).
"""
import dataclasses
import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Finite, so a row with no visible key gives zeros instead of NaN.
NEG_INF = -1e30


# --- single-head scores (RNN-era attention) ----------------------------------
def dot_score(q, k):
  """[B, Tq, D] x [B, Tk, D] -> [B, Tq, Tk]."""
  return jnp.einsum("bqd,bkd->bqk", q, k)


def scaled_dot_score(q, k):
  return dot_score(q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)


class BilinearScore(nn.Module):
  """Luong et al. (2015) "general": q^T W k."""

  @nn.compact
  def __call__(self, q, k):
    w = self.param("W", nn.initializers.lecun_normal(), (q.shape[-1], k.shape[-1]))
    return jnp.einsum("bqd,de,bke->bqk", q, w, k)


class AdditiveScore(nn.Module):
  """Bahdanau et al. (2015) eq. 6 / Luong "concat": v^T tanh(W q + U k).

  A decoder projects the encoder states once per sentence with
  `project_keys` and passes them as `keys_projected`, instead of computing
  U k at every output step (Bahdanau et al., appendix A).
  """
  hidden: int

  def setup(self):
    self.W = nn.Dense(self.hidden, use_bias=False)
    self.U = nn.Dense(self.hidden)
    self.v = self.param("v", nn.initializers.lecun_normal(), (self.hidden, 1))

  def project_keys(self, k):
    return self.U(k)

  def __call__(self, q, k=None, keys_projected=None):
    uk = self.U(k) if keys_projected is None else keys_projected
    e = jnp.tanh(self.W(q)[:, :, None, :] + uk[:, None, :, :])
    return (e @ self.v)[..., 0]


def masked_softmax(scores, mask=None):
  """Softmax over the last axis; masked entries (False) get weight 0, and a
  row with nothing visible gets all zeros."""
  if mask is None:
    return jax.nn.softmax(scores, axis=-1)
  scores = jnp.where(mask, scores, NEG_INF)
  return jax.nn.softmax(scores, axis=-1) * mask


def attend(scores, values, mask=None):
  """weights = softmax(scores) [.., Tq, Tk]; context = weights @ values."""
  weights = masked_softmax(scores, mask)
  return jnp.einsum("...qk,...kd->...qd", weights, values), weights


# --- masks ---------------------------------------------------------------------
@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Mask:
  """Which keys each query may see. Every field is optional.

  kv_valid     [B, Tk] bool, False for padding keys
  kv_lengths   [B] int: keys from this position on are padding (padding at
               the end); the same as kv_valid, but the "xla" path can hand
               it to fused kernels instead of a dense mask
  causal       query i sees keys j <= i (+ q_offset)
  window       restricted attention: |i - j| <= window (Vaswani et al.,
               Table 1, "Self-Attention (restricted)")
  q_segments   [B, Tq] int and kv_segments [B, Tk] int: packed examples;
               a query sees only keys of its own segment
  q_offset     position of query 0 among the keys (decoding with a cache)
  """
  kv_valid: Optional[jax.Array] = None
  kv_lengths: Optional[jax.Array] = None
  causal: bool = False
  window: Optional[int] = None
  q_segments: Optional[jax.Array] = None
  kv_segments: Optional[jax.Array] = None
  q_offset: int = 0

  # A pytree, so that masks pass through jax.checkpoint and nn.scan as
  # arguments. causal, window and an integer q_offset stay static (they
  # decide which kernel runs); arrays and a traced q_offset are leaves.
  def tree_flatten(self):
    traced = not isinstance(self.q_offset, int)
    leaves = (self.kv_valid, self.kv_lengths, self.q_segments, self.kv_segments,
              self.q_offset if traced else None)
    return leaves, (self.causal, self.window, None if traced else self.q_offset)

  @classmethod
  def tree_unflatten(cls, static, leaves):
    causal, window, q_offset = static
    kv_valid, kv_lengths, q_segments, kv_segments, traced_offset = leaves
    return cls(kv_valid, kv_lengths, causal, window, q_segments, kv_segments,
               traced_offset if q_offset is None else q_offset)

  def block(self, q_pos, k_pos, kv_valid=None, q_seg=None, kv_seg=None):
    """Bool mask [B or 1, 1, len(q_pos), len(k_pos)] for these positions."""
    m = jnp.ones((1, 1, q_pos.shape[0], k_pos.shape[0]), bool)
    qp, kp = q_pos[:, None] + self.q_offset, k_pos[None, :]
    if self.causal:
      m &= qp >= kp
    if self.window is not None:
      m &= jnp.abs(qp - kp) <= self.window
    if kv_valid is not None:
      m &= kv_valid[:, None, None, :]
    if q_seg is not None:
      m &= q_seg[:, None, :, None] == kv_seg[:, None, None, :]
    return m

  def valid_keys(self, kv_len):
    """[B, Tk] bool of the non-padding keys (None: all are)."""
    valid = self.kv_valid
    if self.kv_lengths is not None:
      by_length = jnp.arange(kv_len)[None] < self.kv_lengths[:, None]
      valid = by_length if valid is None else valid & by_length
    return valid

  def dense(self, q_len, kv_len):
    return self.block(jnp.arange(q_len), jnp.arange(kv_len), self.valid_keys(kv_len),
                      self.q_segments, self.kv_segments)

  def structured(self, q_len, kv_len):
    """Whether jax.nn.dot_product_attention can take this mask as lengths,
    `is_causal` and `local_window_size` (no dense [Tq, Tk] mask)."""
    # (q_offset is a traced index when decoding with a cache: not structured.)
    return (self.kv_valid is None and self.q_segments is None
            and isinstance(self.q_offset, int) and self.q_offset == 0
            and (q_len == kv_len or not (self.causal or self.window is not None)))


# --- multi-head dot-product attention: three implementations -----------------
def dot_product_attention(q, k, v, mask=None, *, bias=None, implementation="xla",
                          return_weights=False, q_chunk=256, kv_chunk=256):
  """q [B, Tq, H, D], k/v [B, Tk, H, D] -> out [B, Tq, H, D] (, weights
  [B, H, Tq, Tk] when `return_weights`, which uses the naive path).

  `bias` [B or 1, H or 1, Tq, Tk] is added to the scaled scores before the
  softmax (Swin's relative position bias: softmax(q k^T / sqrt(d) + B)).
  """
  mask = mask or Mask()
  Tq, Tk = q.shape[1], k.shape[1]
  if return_weights or implementation == "naive":
    # Scores and softmax in float32 whatever the inputs (bfloat16 policy).
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / q.shape[-1] ** 0.5
    if bias is not None:
      scores = scores + bias.astype(jnp.float32)
    weights = masked_softmax(scores, mask.dense(Tq, Tk))
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    return (out, weights) if return_weights else out
  if implementation == "xla":
    if mask.structured(Tq, Tk):
      # Lengths, causality and windows as such: fused kernels (cuDNN) take
      # them without a [Tq, Tk] mask in memory.
      window = None if mask.window is None else (mask.window, mask.window)
      lengths = None if mask.kv_lengths is None else mask.kv_lengths.astype(jnp.int32)
      out = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=mask.causal,
                                         key_value_seq_lengths=lengths,
                                         local_window_size=window)
      if lengths is None:
        return out
      return out * (lengths > 0)[:, None, None, None].astype(out.dtype)
    dense = mask.dense(Tq, Tk)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=dense)
    # jax gives a fully masked row the mean of the values; make it zero.
    return out * jnp.any(dense, -1).transpose(0, 2, 1)[..., None]
  if bias is not None:
    raise ValueError(f"attention bias needs implementation naive or xla, not "
                     f"{implementation!r}")
  if implementation == "chunked":
    return chunked_attention(q, k, v, mask, q_chunk=q_chunk, kv_chunk=kv_chunk)
  if implementation == "banded":
    return banded_attention(q, k, v, mask)
  raise ValueError(f"unknown attention implementation {implementation!r}: "
                   "use naive, xla, chunked or banded")


def banded_attention(q, k, v, mask):
  """Restricted self-attention in O(n r d): queries in blocks of r see only
  their own and the two neighbouring key blocks, which hold every key within
  distance r. Needs `mask.window` = r and Tq == Tk (self-attention)."""
  r = mask.window
  if r is None or q.shape[1] != k.shape[1] or mask.q_offset:
    raise ValueError("banded attention needs Mask(window=r) and self-attention")
  B, T, H, D = q.shape
  n = -(-T // r)
  pad = n * r - T
  padded = lambda x: jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
  valid = mask.valid_keys(T)
  valid = jnp.ones((B, T), bool) if valid is None else valid
  seg = mask.q_segments
  qb = padded(q).reshape(B, n, r, H, D)

  def neighbours(x):
    """[B, n * r, ...] -> [B, n, 3r, ...]: blocks i-1, i, i+1 side by side."""
    x = x.reshape(x.shape[0], n, r, *x.shape[2:])
    zero = jnp.zeros_like(x[:, :1])
    prev = jnp.concatenate([zero, x[:, :-1]], 1)
    nxt = jnp.concatenate([x[:, 1:], zero], 1)
    return jnp.concatenate([prev, x, nxt], 2)
  kb, vb = neighbours(padded(k)), neighbours(padded(v))
  kvalid = neighbours(jnp.pad(valid, ((0, 0), (0, pad))))
  qpos = jnp.arange(n * r).reshape(n, r)
  kpos = neighbours(jnp.broadcast_to(jnp.arange(n * r), (1, n * r)))[0]
  m = (jnp.abs(qpos[:, :, None] - kpos[:, None, :]) <= r)[None]  # [1, n, r, 3r]
  m &= kvalid[:, :, None, :]  # also drops the zero blocks beyond the ends
  if mask.causal:
    m &= (qpos[:, :, None] >= kpos[:, None, :])[None]
  if seg is not None:
    qs = jnp.pad(mask.q_segments, ((0, 0), (0, pad))).reshape(B, n, r)
    ks = neighbours(jnp.pad(mask.kv_segments, ((0, 0), (0, pad)), constant_values=-1))
    m &= qs[:, :, :, None] == ks[:, :, None, :]
  s = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, kb) / jnp.sqrt(D).astype(q.dtype)
  w = masked_softmax(s, m[:, :, None])
  out = jnp.einsum("bnhqk,bnkhd->bnqhd", w, vb)
  return out.reshape(B, n * r, H, D)[:, :T]


def chunked_attention(q, k, v, mask=None, *, q_chunk=256, kv_chunk=256):
  """Memory-efficient attention: never more than a [q_chunk, kv_chunk] block
  of scores at once, forward or backward."""
  mask = mask or Mask()
  B, Tq, H, D = q.shape
  Tk = k.shape[1]
  cq, ck = min(q_chunk, Tq), min(kv_chunk, Tk)
  nq, nk = -(-Tq // cq), -(-Tk // ck)
  pad_q, pad_k = nq * cq - Tq, nk * ck - Tk
  kv_valid = mask.valid_keys(Tk)
  kv_valid = jnp.ones((B, Tk), bool) if kv_valid is None else kv_valid
  kv_valid = jnp.pad(kv_valid, ((0, 0), (0, pad_k)))
  segmented = mask.q_segments is not None
  q_seg = jnp.pad(mask.q_segments, ((0, 0), (0, pad_q))) if segmented else jnp.zeros((B, nq * cq), jnp.int32)
  kv_seg = jnp.pad(mask.kv_segments, ((0, 0), (0, pad_k))) if segmented else jnp.zeros((B, nk * ck), jnp.int32)
  qp = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
  kp = jnp.pad(k, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
  vp = jnp.pad(v, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
  static = _Static(mask.causal, mask.window, mask.q_offset, cq, ck, segmented)
  out = _flash(static, qp, kp, vp, kv_valid, q_seg, kv_seg)
  return out[:, :Tq]


@dataclasses.dataclass(frozen=True)
class _Static:
  causal: bool
  window: Optional[int]
  q_offset: int
  cq: int
  ck: int
  segmented: bool

  def mask(self, i, j, kv_valid, q_seg, kv_seg):
    m = Mask(causal=self.causal, window=self.window, q_offset=self.q_offset)
    return m.block(i * self.cq + jnp.arange(self.cq), j * self.ck + jnp.arange(self.ck),
                   kv_valid, q_seg if self.segmented else None,
                   kv_seg if self.segmented else None)


def _blocks(x, n, c):
  """[B, n * c, ...] -> [n, B, c, ...]."""
  return jnp.moveaxis(x.reshape(x.shape[0], n, c, *x.shape[2:]), 1, 0)


def _unblocks(x):
  return jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def _forward(st, q, k, v, kv_valid, q_seg, kv_seg):
  """Online softmax over key blocks, for each query block.
  Returns out [B, Tq, H, D] and the log-sum-exp of each row [B, H, Tq]."""
  nq, nk = q.shape[1] // st.cq, k.shape[1] // st.ck
  scale = 1.0 / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
  kb, vb = _blocks(k, nk, st.ck), _blocks(v, nk, st.ck)
  validb, kvsegb = _blocks(kv_valid, nk, st.ck), _blocks(kv_seg, nk, st.ck)

  def one_query_block(args):
    i, qi, qsegi = args
    B, _, H, D = qi.shape

    def step(carry, xs):
      m, l, acc = carry
      j, kj, vj, validj, kvsegj = xs
      mask = st.mask(i, j, validj, qsegi, kvsegj)
      s = jnp.einsum("bqhd,bkhd->bhqk", qi, kj).astype(jnp.float32) * scale
      s = jnp.where(mask, s, NEG_INF)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[..., None]) * mask
      corr = jnp.exp(m - m_new)
      l = l * corr + p.sum(-1)
      acc = acc * corr[..., None] + jnp.einsum("bhqk,bkhd->bhqd", p, vj.astype(jnp.float32))
      return (m_new, l, acc), None

    init = (jnp.full((B, H, st.cq), NEG_INF, jnp.float32),
            jnp.zeros((B, H, st.cq), jnp.float32),
            jnp.zeros((B, H, st.cq, D), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(step, init, (jnp.arange(nk), kb, vb, validb, kvsegb))
    safe_l = jnp.where(l > 0, l, 1.0)
    out = (acc / safe_l[..., None]).transpose(0, 2, 1, 3)
    return out.astype(q.dtype), m + jnp.log(safe_l)

  outs, lses = jax.lax.map(one_query_block, (
      jnp.arange(nq), _blocks(q, nq, st.cq), _blocks(q_seg, nq, st.cq)))
  return _unblocks(outs), jnp.moveaxis(lses, 0, 2).reshape(q.shape[0], q.shape[2], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, kv_valid, q_seg, kv_seg):
  return _forward(st, q, k, v, kv_valid, q_seg, kv_seg)[0]


def _flash_fwd(st, q, k, v, kv_valid, q_seg, kv_seg):
  out, lse = _forward(st, q, k, v, kv_valid, q_seg, kv_seg)
  return out, (q, k, v, kv_valid, q_seg, kv_seg, out, lse)


def _flash_bwd(st, residuals, dout):
  """Recomputes each block's probabilities from the saved log-sum-exp
  (Dao et al. 2022, algorithm 2): memory stays O(n)."""
  q, k, v, kv_valid, q_seg, kv_seg, out, lse = residuals
  nq, nk = q.shape[1] // st.cq, k.shape[1] // st.ck
  scale = 1.0 / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
  # D_i = rowsum(dO * O), [B, H, Tq]
  delta = jnp.einsum("bqhd,bqhd->bhq", dout.astype(jnp.float32), out.astype(jnp.float32))
  qb, dob, qsegb = _blocks(q, nq, st.cq), _blocks(dout, nq, st.cq), _blocks(q_seg, nq, st.cq)
  lseb = jnp.moveaxis(lse.reshape(lse.shape[0], lse.shape[1], nq, st.cq), 2, 0)
  deltab = jnp.moveaxis(delta.reshape(delta.shape[0], delta.shape[1], nq, st.cq), 2, 0)

  def one_key_block(dq, xs):
    j, kj, vj, validj, kvsegj = xs

    def step(carry, ys):
      dk, dv = carry
      i, qi, doi, qsegi, lsei, deltai = ys
      mask = st.mask(i, j, validj, qsegi, kvsegj)
      s = jnp.einsum("bqhd,bkhd->bhqk", qi, kj).astype(jnp.float32) * scale
      p = jnp.exp(jnp.where(mask, s, NEG_INF) - lsei[..., None]) * mask
      dv = dv + jnp.einsum("bhqk,bqhd->bkhd", p, doi.astype(jnp.float32))
      dp = jnp.einsum("bqhd,bkhd->bhqk", doi, vj).astype(jnp.float32)
      ds = p * (dp - deltai[..., None]) * scale
      dqi = jnp.einsum("bhqk,bkhd->bqhd", ds, kj.astype(jnp.float32))
      dk = dk + jnp.einsum("bhqk,bqhd->bkhd", ds, qi.astype(jnp.float32))
      return (dk, dv), dqi

    zeros = jnp.zeros(kj.shape, jnp.float32)
    (dk, dv), dqs = jax.lax.scan(step, (zeros, zeros), (
        jnp.arange(nq), qb, dob, qsegb, lseb, deltab))
    return dq + dqs, (dk, dv)

  dq0 = jnp.zeros((nq,) + qb.shape[1:], jnp.float32)
  dq, (dk, dv) = jax.lax.scan(one_key_block, dq0, (
      jnp.arange(nk), _blocks(k, nk, st.ck), _blocks(v, nk, st.ck),
      _blocks(kv_valid, nk, st.ck), _blocks(kv_seg, nk, st.ck)))
  return (_unblocks(dq).astype(q.dtype), _unblocks(dk).astype(k.dtype),
          _unblocks(dv).astype(v.dtype), None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


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
    if kv is None and x_kv is None:  # self-attention (q, k, v can share one matmul)
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
    features = self.features or x.shape[-1]
    weights = [HeadsProjection(x.shape[-1], self.num_heads, features // self.num_heads,
                               name=name)() for name in names]
    return project_heads(x, weights, self.dtype)


class HeadsProjection(nn.Module):
  """The kernel [D, heads, D/heads] and bias [heads, D/heads] of one of q, k,
  v: named, shaped and initialised as flax's DenseGeneral (lecun normal over
  the flattened [D, D] kernel), so checkpoints and flax's module agree; the
  matmul itself is `project_heads`, which can fuse several of them."""
  in_features: int
  num_heads: int
  head_dim: int

  @nn.compact
  def __call__(self):
    flat = nn.initializers.lecun_normal()
    kernel = self.param(
        "kernel", lambda key, shape: flat(key, (shape[0], shape[1] * shape[2])).reshape(shape),
        (self.in_features, self.num_heads, self.head_dim))
    bias = self.param("bias", nn.initializers.zeros, (self.num_heads, self.head_dim))
    return kernel, bias


# Fused QKV (one matmul against the kernels side by side) measured 0.93x the
# separate projections' train-step speed on a 2-core CPU (README, "Train-step
# speed"): the concatenation and the split cost more than the larger matmul
# saves there. It stays a switch (for accelerators, and for the benchmark).
FUSED_QKV = False


def project_heads(x, weights, dtype=jnp.float32, fused=None):
  """x [..., D] times each (kernel [D, H, Dh], bias [H, Dh]) of `weights`:
  one matmul per projection, or with `fused` (default FUSED_QKV) one
  matmul against the kernels side by side, split afterwards."""
  fused = FUSED_QKV if fused is None else fused
  if not fused or len(weights) == 1:
    out = []
    for kernel, bias in weights:
      xc, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=dtype)
      out.append(jnp.einsum("...d,dhk->...hk", xc, kernel) + bias)
    return out
  kernels, biases = zip(*weights)
  kernel, bias = jnp.concatenate(kernels, 1), jnp.concatenate(biases, 0)
  x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=dtype)
  y = jnp.einsum("...d,dhk->...hk", x, kernel) + bias
  return jnp.split(y, len(weights), axis=-2)


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
  (transformer.Stack.decode), beam times the FLOPs of a cache that is
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


# --- 2-D windows (Swin: Liu et al. 2021, section 3.2) -------------------------
def window_partition(x, window):
  """[B, H, W, C] -> [B * (H/w) * (W/w), w * w, C]: non-overlapping w x w
  windows, row-major within the image and within each window."""
  B, H, W, C = x.shape
  x = x.reshape(B, H // window, window, W // window, window, C)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def window_merge(windows, window, height, width):
  """The inverse of `window_partition`: [B * nW, w * w, C] -> [B, H, W, C]."""
  C = windows.shape[-1]
  x = windows.reshape(-1, height // window, width // window, window, window, C)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, C)


def shifted_window_regions(height, width, window, shift):
  """[nW, w * w] int: after the cyclic shift by (-shift, -shift), which of the
  3 x 3 regions of the shifted image each token of each window lies in.
  Within a window, tokens of different regions were not neighbours before
  the shift, so they must not see each other: as `Mask` segments these ids
  are Swin's masked attention for shifted windows."""
  # numpy: static, from the shapes alone.
  edges = lambda n: np.digitize(np.arange(n), [n - window, n - shift])
  regions = edges(height)[:, None] * 3 + edges(width)[None, :]
  return window_partition(regions[None, :, :, None], window)[..., 0]


def relative_position_index(window):
  """[w * w, w * w] int: for tokens i, j of a window, the row of a
  (2w - 1)^2 table that holds the bias of their offset (dy, dx) = pos_i - pos_j."""
  pos = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"), -1)
  rel = pos.reshape(-1, 1, 2) - pos.reshape(1, -1, 2) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class RelativePositionBias(nn.Module):
  """Swin's relative position bias: one learned scalar per head for each of
  the (2w - 1)^2 offsets inside a window; returns [1, heads, w*w, w*w] for
  `dot_product_attention(bias=...)`."""
  num_heads: int
  window: int

  @nn.compact
  def __call__(self):
    table = self.param("table", nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 2, self.num_heads))
    bias = table[relative_position_index(self.window)]  # [w*w, w*w, heads]
    return bias.transpose(2, 0, 1)[None]


class WindowAttention(nn.Module):
  """(Shifted) window multi-head self-attention over a feature map [B, H, W, C]
  (Swin, section 3.2): attention within w x w windows, with a relative
  position bias; `shift` > 0 rolls the map by (-shift, -shift) first, so the
  windows straddle the previous layer's, and masks tokens the roll brought
  together. Returns (out [B, H, W, C], weights [B * nW, heads, w*w, w*w] or None)."""
  num_heads: int
  window: int
  shift: int = 0
  relative_bias: bool = True
  implementation: str = "xla"
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, return_weights=False, train=False):
    B, height, width, _ = x.shape
    w, s = self.window, self.shift
    if height % w or width % w or not 0 <= s < w:
      raise ValueError(f"window attention needs the feature map ({height} x {width}) "
                       f"to be a multiple of window={w} and 0 <= shift < window "
                       f"(shift={s}); pad the map or choose another window")
    if s:
      x = jnp.roll(x, (-s, -s), axis=(1, 2))
    mask = None
    if s:
      regions = jnp.tile(jnp.asarray(shifted_window_regions(height, width, w, s)), (B, 1))
      mask = Mask(q_segments=regions, kv_segments=regions)
    bias = RelativePositionBias(self.num_heads, w)() if self.relative_bias else None
    out, weights = MultiHeadAttention(
        self.num_heads, implementation=self.implementation,
        dropout_rate=self.dropout_rate, dtype=self.dtype, name="attention")(
            window_partition(x, w), mask=mask, bias=bias,
            return_weights=return_weights, train=train)
    out = window_merge(out, w, height, width)
    if s:
      out = jnp.roll(out, (s, s), axis=(1, 2))
    return out, weights


# --- attention inside CNNs (the lectures' "Idea #1" and "Idea #2") -------------
class NonLocalBlock(nn.Module):
  """Non-local block (Wang et al. 2018, eq. 1-3, the embedded Gaussian of
  Fig. 2): every position of a feature map x [B, H, W, C] attends to every
  position, y_i = sum_j softmax_j(theta(x_i) . phi(x_j)) g(x_j), and
  z = x + W_z(y). theta, phi and g are 1 x 1 convolutions to C/2 channels
  (the bottleneck); W_z is a 1 x 1 convolution back to C followed by `norm`
  (the network's BatchNorm or GroupNorm) whose scale starts at zero (section
  4.1), so the output projection starts at zero and an inserted block starts
  as the identity. `subsample`: phi and g are max-pooled 2 x 2 first
  (section 3.3: a quarter of the pairs, the same receptive field).
  Returns (z [B, H, W, C], weights [B, H*W, H*W or H*W/4] or None)."""
  norm: Callable
  subsample: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, return_weights=False):
    B, H, W, C = x.shape
    conv = lambda name: nn.Conv(C // 2, (1, 1), dtype=self.dtype, name=name)
    theta = conv("theta")(x).reshape(B, H * W, C // 2)
    pooled = nn.max_pool(x, (2, 2), (2, 2)) if self.subsample else x
    phi = conv("phi")(pooled).reshape(B, -1, C // 2)
    g = conv("g")(pooled).reshape(B, -1, C // 2)
    # The embedded Gaussian: softmax of plain dot products (no 1/sqrt(d)).
    y, weights = attend(dot_score(theta, phi), g)
    y = nn.Conv(C, (1, 1), dtype=self.dtype, name="W_z")(y.reshape(B, H, W, C // 2))
    z = x + self.norm(scale_init=nn.initializers.zeros, name="W_z_norm")(y)
    return z, (weights if return_weights else None)


class LocalSelfAttention(nn.Module):
  """Local self-attention in place of a k x k convolution (Ramachandran et
  al. 2019, eq. 2-3; Hu et al. 2019's local relation layer aggregates the
  same neighbourhoods): each pixel attends, per head, to the k x k pixels
  around it,
    y_ij = sum_ab softmax_ab((q_ij . k_ab + q_ij . r_{a-i, b-j}) / sqrt(d)) v_ab
  with q, k, v 1 x 1 projections of x [B, H, W, C] to `features` channels in
  `num_heads` heads of d features, and the relative position term r the
  concatenation of a learned embedding of the row offset a - i and one of
  the column offset b - j (d/2 features each). Pixels outside the map are
  not attended to. Memory O(H W (features + heads k^2)): a scan visits the
  k^2 offsets one by one (each a shifted view of the padded keys and
  values), so neither a [HW, HW] matrix nor k^2 copies of the keys exist
  (unrolled, XLA keeps the k^2 shifted values: 4.3x the forward's
  temporaries at 112 x 112; `python -m experiments.bench localattention`).
  Returns (y [B, H, W, features], weights [B, H, W, heads, k*k] or None;
  offset (a, b) at index (a + r) * k + b + r, r = k // 2)."""
  features: int
  num_heads: int = 8
  kernel: int = 7
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, return_weights=False):
    B, H, W, _ = x.shape
    k, r, heads = self.kernel, self.kernel // 2, self.num_heads
    if k % 2 == 0 or self.features % heads:
      raise ValueError(f"local self-attention needs an odd kernel (got {k}) and features "
                       f"({self.features}) divisible by num_heads ({heads})")
    d = self.features // heads
    project = lambda name: nn.DenseGeneral((heads, d), use_bias=False, dtype=self.dtype,
                                           name=name)(x)  # [B, H, W, heads, d]
    q, keys, values = project("query"), project("key"), project("value")
    init = nn.initializers.normal(d ** -0.5)
    rows = self.param("row_offset", init, (k, heads, d // 2))
    cols = self.param("column_offset", init, (k, heads, d - d // 2))
    q = q / jnp.sqrt(d).astype(q.dtype)
    # q . r for each row and column offset: [B, H, W, heads, k] each.
    by_row = jnp.einsum("bijnd,and->bijna", q[..., :d // 2], rows.astype(q.dtype))
    by_col = jnp.einsum("bijnd,and->bijna", q[..., d // 2:], cols.astype(q.dtype))
    pad = lambda a: jnp.pad(a, ((0, 0), (r, r), (r, r)) + ((0, 0),) * (a.ndim - 3))
    keys, values = pad(keys), pad(values)
    inside = pad(jnp.ones((1, H, W, 1), bool))
    offsets = jnp.asarray([(a, b) for a in range(k) for b in range(k)])
    window = lambda a, off: jax.lax.dynamic_slice(  # the H x W view at offset (a, b)
        a, (0, off[0], off[1]) + (0,) * (a.ndim - 3), (a.shape[0], H, W) + a.shape[3:])

    def score(_, off):  # one offset's logits [B, H, W, heads]
      s = (jnp.einsum("bijnd,bijnd->bijn", q, window(keys, off))
           + jnp.take(by_row, off[0], -1) + jnp.take(by_col, off[1], -1))
      return None, jnp.where(window(inside, off), s, NEG_INF)
    # Each body rematerialised: its backward pass slices the padded keys
    # and values again instead of keeping k^2 shifted copies of them.
    _, scores = jax.lax.scan(jax.checkpoint(score, prevent_cse=False), None,
                             offsets)  # [k * k, B, H, W, heads]
    weights = jax.nn.softmax(scores.astype(jnp.float32), 0).astype(values.dtype)

    def aggregate(y, step):
      off, w = step
      return y + w[..., None] * window(values, off), None
    y, _ = jax.lax.scan(jax.checkpoint(aggregate, prevent_cse=False), jnp.zeros_like(q),
                        (offsets, weights))
    weights = jnp.moveaxis(weights, 0, -1)
    return y.reshape(B, H, W, self.features), (weights if return_weights else None)


# --- reading attention ------------------------------------------------------------
def attention_rollout(weights, residual=0.5):
  """Attention rollout (Abnar & Zuidema 2020): how much each output token
  draws on each input token through all layers. Each layer's head-averaged
  weights are mixed with the identity for the residual connection, A' =
  (1 - residual) A + residual I, rows renormalised, and the layers
  multiplied from the first: R = A'_L ... A'_1. weights [B, layers, heads,
  T, T] -> R [B, T, T]."""
  a = weights.mean(2)
  a = (1 - residual) * a + residual * jnp.eye(a.shape[-1], dtype=a.dtype)
  a = a / a.sum(-1, keepdims=True)
  out = a[:, 0]
  for layer in range(1, a.shape[1]):
    out = a[:, layer] @ out
  return out


# --- location-based attention (Graves 2013) ----------------------------------
class GravesAttention(nn.Module):
  """Gaussian-mixture window over a memory, for monotonic alignment
  (Graves 2013, "Generating Sequences With RNNs", eqs. 46-51):

    (a^, b^, k^) = W h_t + b;  alpha = exp(a^), beta = exp(b^)
    kappa_t = kappa_{t-1} + exp(k^)             (the window only moves on)
    phi(t, u) = sum_k alpha_k exp(-beta_k (kappa_k - u)^2)
    w_t = sum_u phi(t, u) c_u

  The weights phi are not normalised (as in the paper). Returns (w_t [B, D],
  kappa_t [B, K], phi [B, U]).
  """
  num_components: int = 10

  @nn.compact
  def __call__(self, h, kappa_prev, memory, memory_valid=None):
    params = nn.Dense(3 * self.num_components, name="window")(h)
    a_hat, b_hat, k_hat = jnp.split(params, 3, axis=-1)
    alpha, beta = jnp.exp(a_hat), jnp.exp(b_hat)
    kappa = kappa_prev + jnp.exp(k_hat)
    u = jnp.arange(memory.shape[1], dtype=h.dtype)
    phi = jnp.sum(alpha[:, :, None] * jnp.exp(
        -beta[:, :, None] * (kappa[:, :, None] - u[None, None, :]) ** 2), axis=1)
    if memory_valid is not None:
      phi = phi * memory_valid
    return jnp.einsum("bu,bud->bd", phi, memory), kappa, phi


# --- hard (stochastic) attention (Xu et al. 2015) ----------------------------
def hard_attention(rng, weights, values):
  """Samples one location per query from `weights` [B, Tq, Tk] and returns
  its value as the context [B, Tq, D], the index [B, Tq] and log p(index).
  The deterministic counterpart ("soft" attention) is `attend`'s context,
  the expectation of this one."""
  logits = jnp.log(jnp.maximum(weights, 1e-30))
  index = jax.random.categorical(rng, logits, axis=-1)
  log_prob = jnp.take_along_axis(logits, index[..., None], -1)[..., 0]
  context = jnp.take_along_axis(values, index[..., None], axis=1)
  return context, index, log_prob


def attention_entropy(weights):
  """-sum_k w_k log w_k over the last axis of attention weights [..., Tk]:
  log Tk for uniform attention, 0 for one location. (Not
  jax.scipy.special.entr: its gradient is infinite at a weight that
  underflowed to 0, and the captioner's entropy bonus is differentiated.)"""
  return -jnp.sum(weights * jnp.log(jnp.maximum(weights, 1e-30)), -1)


def reinforce_surrogate(log_prob, reward, baseline, weights,
                        entropy_weight=0.0, baseline_decay=0.9):
  """Surrogate loss whose gradient is Xu et al.'s (2015, eq. 12) estimator:
  the score function (reward - baseline) * d log p(s) with a moving-average
  baseline, plus an entropy bonus on the attention weights.

  log_prob [B, ...] of the sampled locations, reward [B] (e.g. the sample's
  log-likelihood of the target), weights [B, ..., Tk]. Returns (loss,
  new_baseline): add the loss to the likelihood loss, carry the baseline.
  """
  advantage = jax.lax.stop_gradient(reward - baseline)
  log_prob = log_prob.reshape(log_prob.shape[0], -1).sum(-1)
  loss = -jnp.mean(advantage * log_prob) - entropy_weight * jnp.mean(attention_entropy(weights))
  new_baseline = baseline_decay * baseline + (1 - baseline_decay) * jnp.mean(
      jax.lax.stop_gradient(reward))
  return loss, new_baseline
