"""Multi-head dot-product attention: the masks and the kernels.

Kernels take q [B, Tq, H, D], k and v [B, Tk, H, D] and a structured `Mask`
(padding, causal, a local window, packed segments), so that the
memory-efficient implementation never builds a [Tq, Tk] mask:
  "naive"    einsum + softmax; can return the weights
  "xla"      jax.nn.dot_product_attention (the fast path)
  "chunked"  blocks of queries and keys with an online softmax (Rabe &
             Staats 2021; Dao et al. 2022) and a recomputing backward pass:
             O(n) memory for forward and gradients
An additive `bias` (a relative position bias) goes to the naive and xla paths.
"""
import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from attnlab.nn.scores import NEG_INF, masked_softmax


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
