"""Transformer blocks (Vaswani et al. 2017, section 3): sinusoidal positions,
the position-wise feed-forward network, and one layer that is an encoder
layer, a decoder layer (masked self-attention + encoder-decoder attention)
or a decoder-only (GPT) layer. Post-norm as in the paper, pre-norm
(LayerNorm inside the residual branch) as an option.

Decoding keeps, per layer, a key/value cache of the tokens so far: a new
token projects only its own key and value and attends over the cache, so
its attention work does not grow with recomputation of the prefix.
"""
import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnlab import config as config_lib
from attnlab import sharding as sharding_lib
from attnlab.nn import multihead


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


def drop_path(module, y, rate, train):
  """Stochastic depth (Huang et al. 2016, as DeiT/DINO use it): each row's
  residual branch y [B, ...] is zeroed with probability `rate` and scaled by
  1 / (1 - rate) otherwise. `rate` may be traced (a scanned layer's rate);
  None or a Python 0 draws no random bits."""
  if rate is None or not train or (isinstance(rate, (int, float)) and rate == 0):
    return y
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (y.shape[0],) + (1,) * (y.ndim - 1))
  return jnp.where(mask, y / keep, 0).astype(y.dtype)


def drop_path_rates(rate, num_layers):
  """The per-layer rates: 0 at the first layer rising linearly to `rate`
  at the last (DeiT's and DINO's schedule)."""
  return jnp.linspace(0.0, rate, num_layers)


def batch_sharded(x):
  """x with its leading (batch) axis split over the batch axes of the mesh
  the step is traced under (none, or inside shard_map: x as it is). Each
  layer's input is pinned so: with FSDP weights XLA then gathers a layer's
  weights instead of re-laying out its activations the way the weights are
  split (ViT-L/16, FSDP, scanned + remat, 16 devices: 12.7 GiB of
  temporaries per device instead of 47.4)."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(a for a in sharding_lib.BATCH_AXES if a in mesh.auto_axes)
  if not axes:
    return x
  spec = jax.sharding.PartitionSpec(axes if len(axes) > 1 else axes[0])
  return jax.lax.with_sharding_constraint(x, spec)


class Layer(nn.Module):
  """Self-attention (+ encoder-decoder attention when `cross`) + FFN, each
  sub-layer wrapped as LayerNorm(x + Dropout(f(x))) (post-norm, the paper)
  or x + Dropout(f(LayerNorm(x))) (pre-norm); with a `drop_path` rate the
  whole branch of a row is dropped (stochastic depth)."""
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
    mha = lambda name: multihead.MultiHeadAttention(
        self.num_heads, implementation=self.implementation,
        dropout_rate=self.attention_dropout, dtype=self.dtype, name=name)
    self.self_attention = mha("self_attention")
    if self.cross:
      self.cross_attention = mha("cross_attention")
    self.ffn = FeedForward(self.d_ff, self.activation, self.dtype, name="ffn")
    names = ["self_norm"] + (["cross_norm"] if self.cross else []) + ["ffn_norm"]
    self.norms = {n: nn.LayerNorm(name=n) for n in names}
    self.drop = nn.Dropout(self.dropout)

  def _sublayer(self, name, fn, x, train, rate):
    branch = lambda h: drop_path(self, self.drop(fn(h), deterministic=not train), rate, train)
    if self.pre_norm:
      return x + branch(self.norms[name](x))
    return self.norms[name](x + branch(x))

  def __call__(self, x, mask, memory=None, cross_mask=None, cache=None, index=None,
               cross_kv=None, train=False, return_weights=False, drop_path=None):
    """x [B, T, D]. `memory` [B, S, D] (or `cross_kv`, its projected keys
    and values) for the encoder-decoder attention. With `cache` = {"k", "v"
    [B, H, L, Dh]}, x holds the next T tokens of each row, written at
    `index` [B] (all rows at the same position), and `mask` is
    multihead.cache_attention's `visible` (Stack.decode makes it). Arguments are
    positional-friendly (nn.scan, nn.remat).
    Returns (y, weights, new cache or None); weights (when asked) is
    {"self": [B, H, T, T], "cross": [B, H, T, S]} without a cache and
    {"cross": ...} with one (decoding needs only the alignment)."""
    x = batch_sharded(x)
    new_cache = None
    weights = {} if return_weights else None

    def self_attend(h):
      nonlocal new_cache
      if cache is None:
        out, w = self.self_attention(h, mask=mask, train=train,
                                     return_weights=return_weights)
        if return_weights:
          weights["self"] = w
        return out
      k, v = (a.transpose(0, 2, 1, 3) for a in self.self_attention.project_kv(h))
      # Every row is at the same position (decoding starts all rows together):
      # one contiguous write, where a scatter per row is several times slower.
      write = lambda c, new: jax.lax.dynamic_update_slice_in_dim(c, new, index[0], 2)
      new_cache = {"k": write(cache["k"], k), "v": write(cache["v"], v)}
      return self.self_attention(h, kv=(new_cache["k"], new_cache["v"]), train=train,
                                 attention=functools.partial(multihead.cache_attention,
                                                             visible=mask))[0]

    x = self._sublayer("self_norm", self_attend, x, train, drop_path)
    if self.cross:
      def cross_attend(h):
        if cross_kv is None:
          out, w = self.cross_attention(h, memory, cross_mask, train=train,
                                        return_weights=return_weights)
        else:  # decoding: keys and values projected once, head-major
          valid = cross_mask.valid_keys(cross_kv[0].shape[2])
          visible = (jnp.ones((h.shape[0], cross_kv[0].shape[2]), bool) if valid is None
                     else valid)[:, None, None, :]
          out, w = self.cross_attention(
              h, kv=cross_kv, train=train, return_weights=return_weights,
              attention=functools.partial(multihead.cache_attention, visible=visible,
                                          return_weights=return_weights))
        if return_weights:
          weights["cross"] = w
        return out
      x = self._sublayer("cross_norm", cross_attend, x, train, drop_path)
    x = self._sublayer("ffn_norm", self.ffn, x, train, drop_path)
    return x, weights, new_cache

  def project_cross_kv(self, memory):
    """The encoder-decoder attention's keys and values of `memory`, once
    per sentence for decoding: [B, H, S, Dh], as multihead.cache_attention reads
    them."""
    return tuple(a.transpose(0, 2, 1, 3) for a in self.cross_attention.project_kv(memory))


class _ScanBody(Layer):
  """A Layer with nn.scan's calling convention: (carry, per-layer inputs,
  broadcast inputs...) -> (carry, per-layer outputs). `op` selects the
  method, so that one scanned module (one set of stacked parameters)
  serves the forward pass and the projection of the decoder's cross keys."""

  def __call__(self, x, per_layer, mask, memory, cross_mask, index, train,
               return_weights, op):
    cache, cross_kv, rate = per_layer
    if op == "project_cross_kv":
      return x, self.project_cross_kv(memory)
    x, weights, new_cache = super().__call__(x, mask, memory, cross_mask, cache, index,
                                             cross_kv, train, return_weights, rate)
    return x, (weights, new_cache)


# What nn.remat keeps for the backward pass: "full" keeps nothing (each
# layer's forward runs again), "dots" keeps the outputs of matmuls without
# batch dimensions (the projections and the FFN; attention scores and
# element-wise work are recomputed), "none" is no rematerialisation.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Stack(nn.Module):
  """`num_layers` identical Layers: the Transformer's encoder or decoder,
  GPT's and BERT's layers, ViT's encoder.

  scan=False: layers `{prefix}_0 ... {prefix}_{L-1}` called in turn.
  scan=True: one nn.scan over the layers; parameters stacked on a leading
  layer axis under `{prefix}_scan` (one layer is compiled instead of L, and
  the backward pass keeps one layer's activations per step of the scan
  when rematerialised). `remat` is a REMAT_POLICIES key. `drop_path` is
  the stochastic-depth rate of the last layer (drop_path_rates); a scanned
  stack gets each layer's rate as a scanned input.

  A model calls nn.share_scope(self, stack) so that unscanned parameters
  keep the names they had before the stack existed (old checkpoints load).

  The decoding cache is {"index" [B], "kv": per-layer {"k", "v"}}: a list of
  [B, H, L, Dh] arrays, or, scanned, one [B, layers, H, L, Dh] pair (layers
  on axis 1, so that beam search reorders every leaf on axis 0); heads
  before positions, the layout attention reads at every step
  (multihead.cache_attention).
  """
  num_layers: int
  num_heads: int
  d_ff: int
  prefix: str = "layer"
  cross: bool = False
  dropout: float = 0.1
  attention_dropout: float = 0.0
  pre_norm: bool = False
  activation: str = "relu"
  implementation: str = "xla"
  scan: bool = False
  remat: str = "none"
  drop_path: float = 0.0
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {self.remat!r}: use one of "
                       f"{sorted(REMAT_POLICIES)}")
    # Every Layer field is a Stack field of the same name.
    kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(Layer)
              if f.name not in ("parent", "name")}
    if not 0 <= self.drop_path < 1:
      raise ValueError(f"drop_path={self.drop_path} is not in [0, 1)")
    policy = REMAT_POLICIES[self.remat]
    remat = self.remat != "none"
    if self.scan:
      body = _ScanBody
      if remat:  # self counts as argument 0: train, return_weights, op
        body = nn.remat(body, policy=policy, prevent_cse=False, static_argnums=(7, 8, 9))
      # per-layer inputs: the cache and cross keys (layers on axis 1) and
      # the drop-path rates (axis 0).
      body = nn.scan(body, variable_axes={"params": 0},
                     split_rngs={"params": True, "dropout": True},
                     in_axes=((1, 1, 0),) + (nn.broadcast,) * 7, out_axes=1,
                     length=self.num_layers)
      self.scanned = body(**kwargs, name=f"{self.prefix}_scan")
    else:
      layer = nn.remat(Layer, policy=policy, static_argnums=(8, 9)) if remat else Layer
      self.layers = [layer(**kwargs, name=f"{self.prefix}_{i}")
                     for i in range(self.num_layers)]

  def __call__(self, x, mask, memory=None, cross_mask=None, *, train=False,
               return_weights=False):
    """x [B, T, D] -> (y [B, T, D], weights): None, or when asked
    {"self": [B, layers, H, T, T] (, "cross": [B, layers, H, T, S])}."""
    rates = (drop_path_rates(self.drop_path, self.num_layers)
             if self.drop_path and train else None)
    if self.scan:
      x, (weights, _) = self.scanned(x, (None, None, rates), mask, memory, cross_mask, None,
                                     train, return_weights, "call")
      return x, weights
    per_layer = []
    for i, layer in enumerate(self.layers):
      x, w, _ = layer(x, mask, memory, cross_mask, None, None, None, train, return_weights,
                      None if rates is None else rates[i])
      per_layer.append(w)
    if not return_weights:
      return x, None
    return x, {k: jnp.stack([w[k] for w in per_layer], 1) for k in per_layer[0]}

  def empty_cache(self, batch, length, d_model, beam=None):
    """A cache for `length` tokens of each of `batch` rows, nothing written;
    with `beam`, one whose rows are beam slots (decode.beam_search tiles
    each row `beam` times): see decode."""
    kv = empty_cache(batch, length, self.num_heads, d_model // self.num_heads, self.dtype)
    if self.scan:
      kv = jax.tree.map(lambda a: jnp.repeat(a[:, None], self.num_layers, 1), kv)
    else:
      kv = [kv] * self.num_layers
    cache = {"index": jnp.zeros((batch,), jnp.int32), "kv": kv}
    if beam:
      cache["slots"] = jnp.zeros((batch, length, beam), bool)
    return cache

  def project_cross_kv(self, memory):
    """Per-layer encoder-decoder keys and values of memory [B, S, D]."""
    if self.scan:
      return self.scanned(memory[:, :0], (None, None, None), None, memory, None, None,
                          False, False, "project_cross_kv")[1]
    return [layer.project_cross_kv(memory) for layer in self.layers]

  def decode(self, x, cache, cross_mask=None, cross_kv=None, *, train=False,
             return_weights=False):
    """The next T tokens x [B, T, D] of each row with the cache -> (y, cross
    weights [B, layers, H, T, S] or None, new cache).

    A cache with beam slots (empty_cache(beam=...)) is never reordered
    when hypotheses change parents: row r keeps what slot r wrote at each
    step, and "slots" [B, L, beam] records, per hypothesis and position,
    which slot of its sentence holds its ancestor's key and value there
    (beam search reorders only that; reorder_cache). Each hypothesis then
    attends over all its sentence's slots, masked to its ancestors'
    (multihead.cache_attention; T = 1)."""
    index, slots = cache["index"], cache.get("slots")
    rows, T = x.shape[:2]
    if slots is None:  # every row sees the positions written so far
      length = jax.tree.leaves(cache["kv"])[0].shape[-2]
      seen = jnp.arange(length)[None] <= index[0] + jnp.arange(T)[:, None]  # [T, L]
      visible = jnp.broadcast_to(seen[None, :, None], (rows, T, 1, length))
    else:
      _, length, beam = slots.shape
      own = jax.nn.one_hot(jnp.arange(rows) % beam, beam, dtype=bool)
      slots = jax.lax.dynamic_update_slice_in_dim(slots, own[:, None], index[0], 1)
      # visible[b, q, p, s]: hypothesis q of sentence b sees slot p at s.
      visible = slots.reshape(rows // beam, beam, length, beam).transpose(0, 1, 3, 2)
    if self.scan:
      x, (weights, kv) = self.scanned(x, (cache["kv"], cross_kv, None), visible, None, cross_mask,
                                      index, train, return_weights, "call")
      weights = weights["cross"] if return_weights and self.cross else None
    else:
      kv, weights = [], []
      cross_kv = cross_kv or [None] * self.num_layers
      for layer, layer_cache, layer_kv in zip(self.layers, cache["kv"], cross_kv):
        x, w, layer_cache = layer(x, visible, None, cross_mask, layer_cache, index, layer_kv,
                                  train, return_weights)
        kv.append(layer_cache)
        weights.append(w["cross"] if return_weights and self.cross else None)
      weights = jnp.stack(weights, 1) if weights[0] is not None else None
    new = {"index": index + x.shape[1], "kv": kv}
    if slots is not None:
      new["slots"] = slots
    return x, weights, new


def layer_matmul_flops(d_model, d_ff, context):
  """Forward matmul FLOPs per token of a self-attention + FFN layer (2 per
  multiply-add): q k v o projections, the FFN, and scores and contexts
  over `context` keys (computed in full, masks and all)."""
  return 4 * 2 * d_model ** 2 + 2 * 2 * d_model * d_ff + 2 * 2 * context * d_model


def empty_cache(batch, length, num_heads, head_dim, dtype=jnp.float32):
  """A layer's key/value cache for `length` tokens, nothing written yet."""
  shape = (batch, num_heads, length, head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def grow_cache(cache, length):
  """A Stack's decoding cache with room for `length` tokens (zeros after
  the ones written): attnlab/decode.py's length buckets."""
  def pad(x, axis):
    return jnp.pad(x, [(0, 0)] * axis + [(0, length - x.shape[axis])]
                   + [(0, 0)] * (x.ndim - axis - 1))
  # kv: [B, H, L, Dh], or scanned [B, layers, H, L, Dh]
  grown = dict(cache, kv=jax.tree.map(lambda x: pad(x, x.ndim - 2), cache["kv"]))
  if "slots" in cache:
    grown["slots"] = pad(cache["slots"], 1)
  return grown


def reorder_cache(cache, rows):
  """decode.beam_search's reordering of a cache with beam slots: the new
  hypotheses [rows] inherit their parents' record of slots; keys and
  values stay where they were written (Stack.decode)."""
  if "slots" not in cache:
    return jax.tree.map(lambda x: x[rows], cache)
  return dict(cache, index=cache["index"][rows], slots=cache["slots"][rows])


def validate(config):
  """The model.* keys of every model built on Stack (one line, exit 2,
  before anything compiles)."""
  m = config.model
  config_lib.check(m.d_model % m.num_heads == 0, "model.d_model",
                   f"{m.d_model} is not divisible by model.num_heads={m.num_heads}",
                   "use a multiple of the head count, e.g. 512 with 8 heads")
  config_lib.check_choice(config, "model.implementation", {"naive", "xla", "chunked"})
  config_lib.check_choice(config, "model.remat", set(REMAT_POLICIES))


def scanned_layout(params, prefix):
  """Parameters of an unscanned stack ({prefix}_0, {prefix}_1, ...) in the
  scanned layout ({prefix}_scan, every leaf stacked on a leading layer
  axis): to start a scan=True run from an unscanned checkpoint."""
  names = sorted((k for k in params if re.fullmatch(rf"{prefix}_\d+", k)),
                 key=lambda k: int(k.rsplit("_", 1)[1]))
  out = {k: v for k, v in params.items() if k not in names}
  out[f"{prefix}_scan"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[k] for k in names])
  return out


def unscanned_layout(params, prefix):
  """The inverse of scanned_layout."""
  out = {k: v for k, v in params.items() if k != f"{prefix}_scan"}
  stacked = params[f"{prefix}_scan"]
  for i in range(jax.tree.leaves(stacked)[0].shape[0]):
    out[f"{prefix}_{i}"] = jax.tree.map(lambda x: x[i], stacked)
  return out
