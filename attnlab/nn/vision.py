"""Attention over images.

Swin's 2-D windows (Liu et al. 2021) are multi-head attention on windows of
a feature map: `window_partition`, a `RelativePositionBias` and, for shifted
windows, `Mask` segments from `shifted_window_regions` (`WindowAttention`).

Attention inside CNNs works on feature maps [B, H, W, C]: `NonLocalBlock`
(every position to every position, Wang et al. 2018) and
`LocalSelfAttention` (each pixel to its k x k neighbourhood, in place of a
convolution; Ramachandran et al. 2019, Hu et al. 2019).
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnlab.nn.kernels import Mask
from attnlab.nn.multihead import MultiHeadAttention
from attnlab.nn.scores import NEG_INF, attend, dot_score


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
  temporaries at 112 x 112; `python -m benchmarks localattention`).
  Returns (y [B, H, W, features], weights [B, H, W, heads, k*k] or None;
  offset (a, b) at index (a + r) * k + b + r, r = k // 2)."""
  features: int
  num_heads: int = 8
  kernel: int = 7
  dtype: jnp.dtype = jnp.float32
  unroll: bool = False  # every offset its own ops (the same values; XLA's
  #                       cost analysis counts a rolled loop's body once)

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
                             offsets, unroll=self.unroll)  # [k * k, B, H, W, heads]
    weights = jax.nn.softmax(scores.astype(jnp.float32), 0).astype(values.dtype)

    def aggregate(y, step):
      off, w = step
      return y + w[..., None] * window(values, off), None
    y, _ = jax.lax.scan(jax.checkpoint(aggregate, prevent_cse=False), jnp.zeros_like(q),
                        (offsets, weights), unroll=self.unroll)
    weights = jnp.moveaxis(weights, 0, -1)
    return y.reshape(B, H, W, self.features), (weights if return_weights else None)
