"""The Transformer encoder-decoder (Vaswani et al. 2017) for translation.

Embeddings are scaled by sqrt(d_model) and added to sinusoidal (or learned)
positions; source, target and output embeddings are one matrix over a
joint vocabulary (section 3.4). Packed batches carry segment ids and
per-segment positions: no attention crosses examples.

Same interface as attnlab/models/seq2seq (so training, beam search and
alignment plots are shared):
  encode(src [B, S], src_valid [B, S]) -> memory
  initial_state(memory, max_len) -> state (key/value caches, encoder keys
      and values projected once per sentence); grow_state(state, max_len),
      reorder_state(state, rows) for decode.beam_search
  decode_step(memory, state, token [B]) -> (state, logits [B, V],
      encoder-decoder attention [B, layers, heads, S])
  __call__(src, src_valid, tgt_in) -> (logits [B, T, V], aux); with
      return_weights aux has every layer's attention: "attention_per_head"
      (encoder-decoder [B, layers, H, T, S]), "encoder_self_attention",
      "decoder_self_attention".
Both stacks are attnlab/nn/blocks.Stack (scan / remat options).
"""
import flax.linen as nn
import jax.numpy as jnp

from attnlab.nn import kernels
from attnlab.nn import blocks


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
  scan: bool = False          # nn.scan over each side's layers
  remat: str = "none"         # blocks.REMAT_POLICIES
  # Mixed precision: bfloat16 matmul inputs and activations out of them;
  # float32 parameters, residual stream, LayerNorm, softmax and logits.
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    # Rows looked up in float32 (as GPT's and BERT's): a bfloat16 lookup
    # cast the whole table every step.
    self.embed = nn.Embed(self.vocab_size, self.d_model, name="embed",
                          embedding_init=nn.initializers.normal(self.d_model ** -0.5))
    if self.learned_positions:
      self.pos_embed = nn.Embed(self.max_len, self.d_model, name="pos_embed")
    stack = lambda cross, prefix: blocks.Stack(
        self.enc_layers if not cross else self.dec_layers, self.num_heads, self.d_ff,
        prefix=prefix, cross=cross, dropout=self.dropout,
        attention_dropout=self.attention_dropout, pre_norm=self.pre_norm,
        implementation=self.implementation, scan=self.scan, remat=self.remat,
        dtype=self.dtype)
    # Shared scopes: parameters stay encoder_{i}/..., decoder_{i}/... .
    self.encoder = stack(False, "encoder")
    nn.share_scope(self, self.encoder)
    self.decoder = stack(True, "decoder")
    nn.share_scope(self, self.decoder)
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

  def encode(self, src, src_valid, train=False, segments=None, positions=None,
             return_weights=False):
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(src.shape[1]), src.shape)
    mask = kernels.Mask(kv_valid=src_valid, q_segments=segments, kv_segments=segments)
    h = self._embed(src, positions, train)
    h, weights = self.encoder(h, mask, train=train, return_weights=return_weights)
    if self.pre_norm:
      h = self.encoder_norm(h)
    memory = {"h": h, "valid": src_valid, "segments": segments}
    return (memory, weights) if return_weights else memory

  def decode(self, memory, tgt_in, train=False, segments=None, positions=None,
             return_weights=False):
    """Teacher forcing: logits [B, T, V] for every target position, and
    (if asked) every layer's attention weights {"self", "cross"}."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tgt_in.shape[1]), tgt_in.shape)
    mask = kernels.Mask(causal=True, q_segments=segments, kv_segments=segments)
    cross = kernels.Mask(kv_valid=memory["valid"], q_segments=segments,
                     kv_segments=memory["segments"])
    x = self._embed(tgt_in, positions, train)
    x, weights = self.decoder(x, mask, memory["h"], cross, train=train,
                              return_weights=return_weights)
    if self.pre_norm:
      x = self.decoder_norm(x)
    logits = self.embed.attend(x).astype(jnp.float32)  # output = embedding^T
    return logits, weights

  def __call__(self, src, src_valid, tgt_in, train=False, return_weights=False,
               src_segments=None, src_positions=None, tgt_segments=None,
               tgt_positions=None):
    memory = self.encode(src, src_valid, train, src_segments, src_positions,
                         return_weights)
    if return_weights:
      memory, encoder_weights = memory
    logits, weights = self.decode(memory, tgt_in, train, tgt_segments, tgt_positions,
                                  return_weights)
    aux = {}
    if return_weights:
      aux["attention_per_head"] = weights["cross"]
      aux["attention"] = weights["cross"][:, -1].mean(1)  # last layer, heads averaged
      aux["encoder_self_attention"] = encoder_weights["self"]
      aux["decoder_self_attention"] = weights["self"]
    return logits, aux

  # --- incremental decoding ----------------------------------------------------
  def initial_state(self, memory, max_len, beam=None):
    """`beam`: a cache of beam slots, for decode.beam_search with
    reorder=reorder_state (blocks.Stack.decode)."""
    return {"cache": self.decoder.empty_cache(memory["h"].shape[0], max_len, self.d_model,
                                              beam),
            "cross_kv": self.decoder.project_cross_kv(memory["h"])}

  @staticmethod
  def grow_state(state, length):
    """The state with room for `length` target tokens (decode.py's buckets)."""
    return dict(state, cache=blocks.grow_cache(state["cache"], length))

  @staticmethod
  def reorder_state(state, rows):
    """The state of hypotheses [rows] (decode.beam_search's `reorder`)."""
    return dict(state, cache=blocks.reorder_cache(state["cache"], rows))

  def decode_step(self, memory, state, token, train=False):
    index = state["cache"]["index"]
    x = self._embed(token[:, None], index[:, None], train)
    cross = kernels.Mask(kv_valid=memory["valid"])
    x, weights, cache = self.decoder.decode(x, state["cache"], cross, state["cross_kv"],
                                            train=train, return_weights=True)
    if self.pre_norm:
      x = self.decoder_norm(x)
    logits = self.embed.attend(x[:, 0]).astype(jnp.float32)
    return {"cache": cache, "cross_kv": state["cross_kv"]}, logits, weights[:, :, :, 0]


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
