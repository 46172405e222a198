"""Encoder-only masked language model (BERT; Devlin et al. 2019) from the
Transformer's blocks: token + learned position + segment-type embeddings
(LayerNorm'd), post-norm GELU layers, a masked-LM head tied to the token
embedding, and the [CLS] pooler that a classification head reads.

  __call__(tokens, valid, types=None) -> (MLM logits [B, T, V], aux) with
      aux["pooled"] [B, D], aux["classes"] (class logits [B, C]) when
      num_classes > 0, and with return_weights aux["self_attention"]
      [B, layers, H, T, T]
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab.nn import kernels
from attnlab.nn import blocks


class BERT(nn.Module):
  vocab_size: int = 30522
  d_model: int = 768
  num_heads: int = 12
  d_ff: int = 3072
  num_layers: int = 12
  max_len: int = 512
  type_vocab: int = 2
  dropout: float = 0.1
  num_classes: int = 0        # > 0: a sentence classification head
  implementation: str = "xla"
  scan: bool = False          # nn.scan over the layers
  remat: str = "none"         # blocks.REMAT_POLICIES
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    init = nn.initializers.normal(0.02)
    self.embed = nn.Embed(self.vocab_size, self.d_model, embedding_init=init, name="embed")
    self.pos_embed = nn.Embed(self.max_len, self.d_model, embedding_init=init,
                              name="pos_embed")
    self.type_embed = nn.Embed(self.type_vocab, self.d_model, embedding_init=init,
                               name="type_embed")
    self.embed_norm = nn.LayerNorm(epsilon=1e-12, name="embed_norm")
    self.layers = blocks.Stack(self.num_layers, self.num_heads, self.d_ff,
                               dropout=self.dropout, activation="gelu",
                               implementation=self.implementation, scan=self.scan,
                               remat=self.remat, dtype=self.dtype)
    nn.share_scope(self, self.layers)  # parameters stay layer_{i}/...
    self.mlm_dense = nn.Dense(self.d_model, name="mlm_dense")
    self.mlm_norm = nn.LayerNorm(epsilon=1e-12, name="mlm_norm")
    self.mlm_bias = self.param("mlm_bias", nn.initializers.zeros, (self.vocab_size,))
    self.pooler = nn.Dense(self.d_model, name="pooler")
    if self.num_classes:
      self.classifier = nn.Dense(self.num_classes, name="classifier")
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, tokens, valid, types=None, train=False, return_weights=False):
    types = jnp.zeros_like(tokens) if types is None else types
    positions = jnp.arange(tokens.shape[1])[None]
    x = self.embed(tokens) + self.pos_embed(positions) + self.type_embed(types)
    x = self.drop(self.embed_norm(x), deterministic=not train)
    mask = kernels.Mask(kv_valid=valid)
    x, weights = self.layers(x, mask, train=train, return_weights=return_weights)
    h = self.mlm_norm(nn.gelu(self.mlm_dense(x)))
    mlm_logits = self.embed.attend(h) + self.mlm_bias
    aux = {"pooled": jnp.tanh(self.pooler(x[:, 0]))}  # the [CLS] position
    if self.num_classes:
      aux["classes"] = self.classifier(self.drop(aux["pooled"], deterministic=not train))
    if return_weights:
      aux["self_attention"] = weights["self"]
    return mlm_logits, aux


def mask_tokens(rng, tokens, valid, mask_id, vocab_size, first_regular, rate=0.15):
  """BERT's corruption (section 3.1): choose `rate` of the real tokens; of
  those, 80% become [MASK], 10% a random regular token, 10% stay. Returns
  (inputs, chosen [B, T] bool): the MLM loss is over the chosen positions.
  Ids below `first_regular` (padding, specials) are never chosen or drawn."""
  choose, how, rand = jax.random.split(rng, 3)
  chosen = (jax.random.uniform(choose, tokens.shape) < rate) & valid & (tokens >= first_regular)
  u = jax.random.uniform(how, tokens.shape)
  random_ids = jax.random.randint(rand, tokens.shape, first_regular, vocab_size)
  inputs = jnp.where(chosen & (u < 0.8), mask_id, tokens)
  inputs = jnp.where(chosen & (u >= 0.8) & (u < 0.9), random_ids, inputs)
  return inputs, chosen
