"""The Transformer encoder-decoder (Vaswani et al. 2017) for translation.

Embeddings are scaled by sqrt(d_model) and added to sinusoidal (or learned)
positions; source, target and output embeddings are one matrix over a
joint vocabulary (section 3.4). Packed batches carry segment ids and
per-segment positions: no attention crosses examples.

Same interface as attnlab/models/seq2seq (so training, beam search and
alignment plots are shared):
  encode(src [B, S], src_valid [B, S]) -> memory
  initial_state(memory, max_len) -> state (key/value caches, encoder keys
      and values projected once per sentence)
  decode_step(memory, state, token [B]) -> (state, logits [B, V],
      encoder-decoder attention [B, layers, heads, S])
  __call__(src, src_valid, tgt_in) -> (logits [B, T, V], aux)
"""
import flax.linen as nn
import jax.numpy as jnp

from attnlab.nn import attention as att
from attnlab.nn import transformer as blocks


class Transformer(nn.Module):
  vocab_size: int
  d_model: int = 512
  num_heads: int = 8
  d_ff: int = 2048
  enc_layers: int = 6
  dec_layers: int = 6
  dropout: float = 0.1
  attention_dropout: float = 0.0
  pre_norm: bool = False
  learned_positions: bool = False
  max_len: int = 512          # rows of the learned position table
  implementation: str = "xla"
  # Mixed precision: bfloat16 matmul inputs and activations out of them;
  # float32 parameters, residual stream, LayerNorm, softmax and logits.
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype, name="embed",
                          embedding_init=nn.initializers.normal(self.d_model ** -0.5))
    if self.learned_positions:
      self.pos_embed = nn.Embed(self.max_len, self.d_model, name="pos_embed")
    layer = lambda cross, name: blocks.Layer(
        self.num_heads, self.d_ff, cross=cross, dropout=self.dropout,
        attention_dropout=self.attention_dropout, pre_norm=self.pre_norm,
        implementation=self.implementation, dtype=self.dtype, name=name)
    self.encoder = [layer(False, f"encoder_{i}") for i in range(self.enc_layers)]
    self.decoder = [layer(True, f"decoder_{i}") for i in range(self.dec_layers)]
    if self.pre_norm:  # the residual stream is never normalised otherwise
      self.encoder_norm = nn.LayerNorm(name="encoder_norm")
      self.decoder_norm = nn.LayerNorm(name="decoder_norm")
    self.drop = nn.Dropout(self.dropout)

  def _embed(self, tokens, positions, train):
    x = self.embed(tokens) * jnp.sqrt(self.d_model).astype(jnp.float32)
    if self.learned_positions:
      x = x + self.pos_embed(positions)
    else:
      x = x + blocks.sinusoidal_positions(positions, self.d_model)
    return self.drop(x, deterministic=not train)

  def encode(self, src, src_valid, train=False, segments=None, positions=None):
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(src.shape[1]), src.shape)
    mask = att.Mask(kv_valid=src_valid, q_segments=segments, kv_segments=segments)
    h = self._embed(src, positions, train)
    for layer in self.encoder:
      h, _, _ = layer(h, mask, train=train)
    if self.pre_norm:
      h = self.encoder_norm(h)
    return {"h": h, "valid": src_valid, "segments": segments}

  def decode(self, memory, tgt_in, train=False, segments=None, positions=None,
             return_weights=False):
    """Teacher forcing: logits [B, T, V] for every target position, and the
    encoder-decoder attention per layer [B, layers, heads, T, S] if asked."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tgt_in.shape[1]), tgt_in.shape)
    mask = att.Mask(causal=True, q_segments=segments, kv_segments=segments)
    cross = att.Mask(kv_valid=memory["valid"], q_segments=segments,
                     kv_segments=memory["segments"])
    x = self._embed(tgt_in, positions, train)
    weights = []
    for layer in self.decoder:
      x, w, _ = layer(x, mask, memory["h"], cross, train=train,
                      return_weights=return_weights)
      weights.append(w)
    if self.pre_norm:
      x = self.decoder_norm(x)
    logits = self.embed.attend(x).astype(jnp.float32)  # output = embedding^T
    return logits, (jnp.stack(weights, 1) if return_weights else None)

  def __call__(self, src, src_valid, tgt_in, train=False, return_weights=False,
               src_segments=None, src_positions=None, tgt_segments=None,
               tgt_positions=None):
    memory = self.encode(src, src_valid, train, src_segments, src_positions)
    logits, weights = self.decode(memory, tgt_in, train, tgt_segments, tgt_positions,
                                  return_weights)
    aux = {}
    if return_weights:
      aux["attention_per_head"] = weights
      aux["attention"] = weights[:, -1].mean(1)  # last layer, heads averaged
    return logits, aux

  # --- incremental decoding ----------------------------------------------------
  def initial_state(self, memory, max_len):
    batch = memory["h"].shape[0]
    head_dim = self.d_model // self.num_heads
    return {"cache": [blocks.empty_cache(batch, max_len, self.num_heads, head_dim,
                                         self.dtype) for _ in self.decoder],
            "cross_kv": [layer.cross_attention.project_kv(memory["h"])
                         for layer in self.decoder]}

  def decode_step(self, memory, state, token, train=False):
    index = state["cache"][0]["index"]
    x = self._embed(token[:, None], index[:, None], train)
    cross = att.Mask(kv_valid=memory["valid"])
    caches, weights = [], []
    for layer, cache, kv in zip(self.decoder, state["cache"], state["cross_kv"]):
      x, w, cache = layer(x, None, None, cross, train=train, return_weights=True,
                          cache=cache, cross_kv=kv)
      caches.append(cache)
      weights.append(w[:, :, 0])
    if self.pre_norm:
      x = self.decoder_norm(x)
    logits = self.embed.attend(x[:, 0]).astype(jnp.float32)
    return {"cache": caches, "cross_kv": state["cross_kv"]}, logits, jnp.stack(weights, 1)


def matmul_flops(m, src_len, tgt_len):
  """Forward matmul FLOPs of one sentence pair (2 per multiply-add), the
  attention scores and contexts included (computed in full, masks and all)."""
  d, ff = m.d_model, m.d_ff
  enc = m.enc_layers * blocks.layer_matmul_flops(d, ff, src_len)
  dec = m.dec_layers * (blocks.layer_matmul_flops(d, ff, tgt_len)
                        + 2 * 2 * d * d + 2 * 2 * src_len * d)  # + cross q o, attention
  dec += 2 * d * m.vocab_size                               # output = embedding^T
  cross_kv = m.dec_layers * 2 * 2 * d * d                   # per source token
  return src_len * (enc + cross_kv) + tgt_len * dec
