"""Show, Attend and Tell (Xu et al. 2015): an LSTM that writes a caption
word by word while attending over a CNN's or ViT's grid of annotations
a = {a_1, ..., a_L}, a_i in R^D (section 3.1.1: 14 x 14 x 512 at 224).

Each step t (section 3.1.2, eq. 1-7 and 4.2.1):
  alpha_t = softmax_i(f_att(a_i, h_{t-1}))      f_att: additive attention,
                                                scores.AdditiveScore (Bahdanau's)
  soft:  z_t = beta_t sum_i alpha_ti a_i,        beta_t = sigmoid(f_beta(h_{t-1}))
  hard:  z_t = beta_t a_{s_t}, s_t ~ Multinoulli(alpha_t) (hard.hard_attention);
         with probability `expected_prob` (the paper's 0.5) z_t is the soft
         expectation instead (section 4.1)
  (c_t, h_t) = LSTM([E y_{t-1}; z_t], (c_{t-1}, h_{t-1}))
  p(y_t) = softmax(L_o(E y_{t-1} + L_h h_t + L_z z_t))   the deep output (eq. 7)
and (c_0, h_0) = (tanh f_init,c(mean_i a_i), tanh f_init,h(mean_i a_i)).

The interface is the seq2seq models' (attnlab/models/seq2seq.py), so that
teacher forcing, greedy and beam decoding (attnlab/decode.py) and attention
plots share one decoder step:
  encode(images [B, H, W, C]) -> memory {"annotations" [B, L, D], "keys"}
  initial_state(memory) -> {"carry": (c, h)}
  decode_step(memory, state, token [B], rng=None) -> (state, logits [B, V],
      weights [B, L], log p(s_t) [B] (hard, sampled) or None)
  __call__(images, tokens_in [B, T], train, rng) -> (logits [B, T, V],
      {"attention": [B, T, L], "log_prob": [B, T] (hard attention in training)})
Decoding (no rng) uses the soft expectation for both kinds.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab.nn import hard
from attnlab.nn import scores


def annotation_grid(backbone, aux):
  """The backbone's tokens as annotations [B, L, D]: a ViT's patch tokens
  (its class token left out), a ResNet's last feature map as a sequence."""
  tokens = aux["tokens"]
  if getattr(backbone, "pool", None) == "tok":
    tokens = tokens[:, 1:]
  return tokens


def doubly_stochastic_penalty(weights, mask=None):
  """The doubly stochastic regulariser without its lambda (section 4.2.1,
  eq. 14): sum_i (1 - sum_t alpha_ti)^2 per caption, averaged over the batch;
  weights [B, T, L], mask [B, T] (False: padding steps, no attention)."""
  if mask is not None:
    weights = weights * mask[..., None]
  return jnp.mean(jnp.sum((1.0 - weights.sum(1)) ** 2, -1))


def decoder_matmul_flops(model, locations, width, length):
  """Forward matmul FLOPs of the decoder over one image's `locations`
  annotations of `width` and `length` words (2 per multiply-add): the keys
  U a_i once, then per word the query W h, the scores' v^T tanh, the
  context, beta, the LSTM and the deep output."""
  E, H, A, V = model.embed, model.hidden, model.attention_dim, model.vocab_size
  per_word = (2 * H * A + 2 * locations * A + 2 * locations * width + 2 * H
              + 2 * 4 * H * (E + width + H) + 2 * (H * E + width * E + E * V))
  return 2 * locations * width * A + length * per_word


class ShowAttendTell(nn.Module):
  vocab_size: int
  backbone: nn.Module            # a ViT or ResNet with num_classes=0 (aux["tokens"])
  embed: int = 512
  hidden: int = 1024
  attention_dim: int = 512
  attention: str = "soft"        # "soft" | "hard"
  expected_prob: float = 0.5     # hard: chance of the expected context instead
  dropout: float = 0.0

  def setup(self):
    self.embedding = nn.Embed(self.vocab_size, self.embed, name="embed")
    self.score_fn = scores.AdditiveScore(self.attention_dim, name="f_att")
    self.f_beta = nn.Dense(1, name="f_beta")
    self.init_c = nn.Dense(self.hidden, name="init_c")
    self.init_h = nn.Dense(self.hidden, name="init_h")
    self.cell = nn.OptimizedLSTMCell(self.hidden, name="lstm")
    self.L_h = nn.Dense(self.embed, name="L_h")
    self.L_z = nn.Dense(self.embed, use_bias=False, name="L_z")
    self.L_o = nn.Dense(self.vocab_size, name="L_o")
    self.drop = nn.Dropout(self.dropout)

  def encode(self, images, train=False):
    _, aux = self.backbone(images, train=train)
    a = annotation_grid(self.backbone, aux)
    # U a_i once per image, not at every word (as Bahdanau's appendix A).
    return {"annotations": a, "keys": self.score_fn.project_keys(a)}

  def initial_state(self, memory, max_len=None):
    del max_len  # a recurrent state does not grow with the caption
    mean = memory["annotations"].mean(1)
    return {"carry": (jnp.tanh(self.init_c(mean)), jnp.tanh(self.init_h(mean)))}

  def decode_step(self, memory, state, token, rng=None, train=False):
    a = memory["annotations"]
    c, h = state["carry"]
    e = self.score_fn(h[:, None], keys_projected=memory["keys"])  # [B, 1, L], eq. 4
    expected, weights = scores.attend(e, a)
    expected, weights = expected[:, 0], weights[:, 0]
    log_prob = None
    z = expected
    if self.attention == "hard" and rng is not None:
      pick, use_expected = jax.random.split(rng)
      sampled, _, log_prob = hard.hard_attention(pick, weights[:, None], a)
      keep = jax.random.bernoulli(use_expected, self.expected_prob, (a.shape[0], 1))
      z = jnp.where(keep, expected, sampled[:, 0])
      log_prob = jnp.where(keep[:, 0], 0.0, log_prob[:, 0])  # no sample, no score
    z = jax.nn.sigmoid(self.f_beta(h)) * z  # the gating scalar beta_t
    y = self.embedding(token)
    (c, h), _ = self.cell((c, h), jnp.concatenate([y, z], -1))
    out = self.drop(y + self.L_h(h) + self.L_z(z), deterministic=not train)
    return {"carry": (c, h)}, self.L_o(out), weights, log_prob

  def __call__(self, images, tokens_in, train=False, rng=None):
    memory = self.encode(images, train)
    rngs = (jax.random.split(rng, tokens_in.shape[1]) if rng is not None
            else jnp.zeros((tokens_in.shape[1], 2), jnp.uint32))

    def body(module, state, token, key):
      state, logits, weights, log_prob = module.decode_step(
          memory, state, token, key if rng is not None else None, train)
      return state, (logits, weights, jnp.zeros(token.shape) if log_prob is None else log_prob)
    scan = nn.scan(body, variable_broadcast="params",
                   split_rngs={"params": False, "dropout": True}, in_axes=(1, 0), out_axes=1)
    _, (logits, weights, log_prob) = scan(self, self.initial_state(memory), tokens_in, rngs)
    aux = {"attention": weights}
    if self.attention == "hard" and rng is not None:
      aux["log_prob"] = log_prob
    return logits, aux
