"""RNN encoder-decoders for translation, with and without attention.

  rnnencdec  Cho et al. (2014): the source squeezed into one fixed context
             vector c = tanh(V h_S), given to every decoder step.
  rnnsearch  Bahdanau et al. (2015): bidirectional encoder, annotations
             h_j = [fwd_j; bwd_j]; s_i = f(s_{i-1}, y_{i-1}, c_i) with
             c_i = sum_j alpha_ij h_j, alpha = softmax(v^T tanh(W s_{i-1} + U h_j)).
  luong      Luong et al. (2015) global attention: h_t = f(h_{t-1},
             [y_{t-1}; h~_{t-1}]) (input feeding), c_t from score(h_t, h_s)
             (dot | general | concat), h~_t = tanh(W_c [c_t; h_t]).

Encoder and decoder are stacks of `num_layers` cells (dropout between
layers); attention and the output read the top decoder layer, input
feeding and the context enter the bottom one.

Every model has the same interface:
  encode(src [B, S], src_valid [B, S]) -> memory (a dict of arrays)
  decode_step(memory, state, token [B]) -> (state, logits [B, V], weights [B, S])
  __call__(src, src_valid, tgt_in [B, T]) -> (logits [B, T, V], {"attention": [B, T, S]})
so that training (teacher forcing), greedy/beam decoding and alignment
plots share one decoder step.
"""
import flax.linen as nn
import jax.numpy as jnp

from attnlab.nn import scores
from attnlab.nn import rnn


def _cell(kind, hidden, name):
  return rnn.CELLS[kind](features=hidden, name=name)


def _hidden_of(kind, carry):
  return carry[1] if kind == "lstm" else carry


class Seq2Seq(nn.Module):
  vocab_size: int
  model: str = "rnnsearch"      # rnnencdec | rnnsearch | luong
  cell: str = "gru"
  embed: int = 256
  hidden: int = 512
  score: str = "concat"         # luong: dot | general | concat
  dropout: float = 0.0
  num_layers: int = 1

  def setup(self):
    self.embedding = nn.Embed(self.vocab_size, self.embed, name="embed")
    encoder, decoder = [], []
    for layer in range(self.num_layers):
      suffix = f"_{layer}" if layer else ""
      fwd = nn.RNN(_cell(self.cell, self.hidden, "enc_fwd" + suffix), return_carry=True)
      if self.model == "rnnsearch":
        bwd = nn.RNN(_cell(self.cell, self.hidden, "enc_bwd" + suffix),
                     return_carry=True, reverse=True, keep_order=True)
        fwd = nn.Bidirectional(fwd, bwd, return_carry=True)
      encoder.append(fwd)
      decoder.append(_cell(self.cell, self.hidden, "dec" + suffix))
    self.encoder, self.decoder = encoder, decoder
    self.init_state = nn.Dense(self.hidden, name="init_state")
    if self.model == "rnnencdec":
      self.summary = nn.Dense(self.hidden, name="summary")
    elif self.model == "rnnsearch":
      self.score_fn = scores.AdditiveScore(self.hidden, name="score")
    else:
      if self.score == "general":
        self.score_fn = scores.BilinearScore(name="score")
      elif self.score == "concat":
        self.score_fn = scores.AdditiveScore(self.hidden, name="score")
      else:
        self.score_fn = None
      self.combine = nn.Dense(self.hidden, name="combine")
    if self.model != "luong":
      # Deep output with maxout (Bahdanau et al. appendix A.2.2; Cho et al.
      # 2014): t = maxout(U s + V y + C c), 2 pieces per unit, then W_o t.
      self.deep_output = nn.Dense(2 * self.embed, name="deep_output")
    self.output = nn.Dense(self.vocab_size, name="output")
    self.drop = nn.Dropout(self.dropout)

  def encode(self, src, src_valid, train=False):
    h = self.drop(self.embedding(src), deterministic=not train)
    lengths = src_valid.sum(-1)
    carries = []
    for layer, rnn_layer in enumerate(self.encoder):
      if layer:
        h = self.drop(h, deterministic=not train)
      carry, h = rnn_layer(h, seq_lengths=lengths)
      carries.append(carry)
    memory = {"valid": src_valid}
    if self.model == "rnnsearch":
      memory["annotations"] = h  # [B, S, 2H]
      # s_0 = tanh(W_s bwd_1), Bahdanau et al. appendix A.2.2
      bwd_first = h[:, 0, self.hidden:]
      memory["s0"] = jnp.tanh(self.init_state(bwd_first))
    elif self.model == "rnnencdec":
      last = _hidden_of(self.cell, carry)
      memory["context"] = jnp.tanh(self.summary(last))  # c = tanh(V h_S)
      memory["s0"] = jnp.tanh(self.init_state(memory["context"]))
    else:
      memory["annotations"] = h
      # Luong et al.: decoder layer l starts from encoder layer l's last state.
      memory["s0_layers"] = [_hidden_of(self.cell, c) for c in carries]
    if self.model != "rnnencdec" and isinstance(self.score_fn, scores.AdditiveScore):
      memory["keys"] = self.score_fn.project_keys(h)  # U h_j, once per sentence
    return memory

  def initial_state(self, memory, max_len=None):
    del max_len  # a recurrent state does not grow with the output
    s0 = memory["s0"] if "s0" in memory else memory["s0_layers"][0]
    layers = memory.get("s0_layers", [s0] + [jnp.zeros_like(s0)] * (self.num_layers - 1))
    lstm = lambda h: (jnp.zeros_like(h), h) if self.cell == "lstm" else h
    state = {"carry": tuple(lstm(h) for h in layers)}
    if self.model == "luong":
      state["feed"] = jnp.zeros_like(s0)  # h~_{t-1}, input feeding
    return state

  def _decoder(self, carries, x, train):
    """One step of the decoder stack: new carries, top layer's output."""
    new = []
    for layer, cell in enumerate(self.decoder):
      if layer:
        x = self.drop(x, deterministic=not train)
      carry, x = cell(carries[layer], x)
      new.append(carry)
    return tuple(new), x

  def _attend(self, query, memory):
    """Context [B, D] and weights [B, S] for one query [B, Dq]."""
    h, valid = memory["annotations"], memory["valid"]
    if self.score_fn is None:
      e = scores.dot_score(query[:, None], h)  # the energies e_ij of eq. 6
    elif "keys" in memory:
      e = self.score_fn(query[:, None], keys_projected=memory["keys"])
    else:
      e = self.score_fn(query[:, None], h)
    context, weights = scores.attend(e, h, valid[:, None, :])
    return context[:, 0], weights[:, 0]

  def decode_step(self, memory, state, token, train=False):
    y = self.drop(self.embedding(token), deterministic=not train)
    carry = state["carry"]
    s_prev = _hidden_of(self.cell, carry[-1])
    if self.model == "rnnsearch":
      context, weights = self._attend(s_prev, memory)
      carry, s = self._decoder(carry, jnp.concatenate([y, context], -1), train)
      features = jnp.concatenate([s, y, context], -1)
    elif self.model == "rnnencdec":
      context = memory["context"]
      weights = jnp.zeros(memory["valid"].shape, jnp.float32)
      carry, s = self._decoder(carry, jnp.concatenate([y, context], -1), train)
      features = jnp.concatenate([s, y, context], -1)
    else:
      carry, h = self._decoder(carry, jnp.concatenate([y, state["feed"]], -1), train)
      context, weights = self._attend(h, memory)
      features = jnp.tanh(self.combine(jnp.concatenate([context, h], -1)))
    new_state = {"carry": carry}
    if self.model == "luong":
      new_state["feed"] = features
    if self.model != "luong":
      t = self.deep_output(features)
      features = jnp.max(t.reshape(*t.shape[:-1], self.embed, 2), axis=-1)
    features = self.drop(features, deterministic=not train)
    return new_state, self.output(features), weights

  def __call__(self, src, src_valid, tgt_in, train=False):
    memory = self.encode(src, src_valid, train)

    def body(module, state, token):
      state, logits, weights = module.decode_step(memory, state, token, train)
      return state, (logits, weights)
    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False,
                                                                  "dropout": True},
                   in_axes=1, out_axes=1)
    _, (logits, weights) = scan(self, self.initial_state(memory), tgt_in)
    return logits, {"attention": weights}


def matmul_flops(m, src_len, tgt_len):
  """Forward matmul FLOPs of one sentence pair (2 per multiply-add), for MFU:
  XLA's cost analysis counts the body of a scan once, not once per step."""
  E, H, V, G = m.embed, m.hidden, m.vocab_size, rnn.GATES[m.cell]
  dirs = 2 if m.model == "rnnsearch" else 1
  cell = lambda inp: 2 * G * H * (inp + H)
  enc = sum(dirs * cell(E if l == 0 else dirs * H) for l in range(m.num_layers))
  ctx = dirs * H if m.model != "luong" else H
  dec = cell(E + ctx) + (m.num_layers - 1) * cell(H)
  # s_0 = tanh(W_s .) (rnnsearch, rnnencdec) and c = tanh(V h_S) (rnnencdec)
  per_sentence = {"rnnsearch": 1, "rnnencdec": 2, "luong": 0}[m.model] * 2 * H * H
  if m.model == "rnnsearch" or (m.model == "luong" and m.score == "concat"):
    per_sentence += 2 * src_len * ctx * H                # U h_j
    dec += 2 * H * H + 2 * src_len * H                   # W s, v^T tanh(.)
  elif m.model == "luong":
    dec += 2 * src_len * H + (2 * H * H if m.score == "general" else 0)
  if m.model != "rnnencdec":
    dec += 2 * src_len * ctx                             # sum_j alpha_j h_j
  if m.model == "luong":
    dec += 2 * 2 * H * H + 2 * H * V                    # combine, output
  else:
    dec += 2 * (H + E + ctx) * 2 * E + 2 * E * V         # maxout, output
  return enc * src_len + dec * tgt_len + per_sentence

