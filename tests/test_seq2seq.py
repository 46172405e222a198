"""Seq2seq models and beam search against independent references."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import decode
from attnlab.models import seq2seq

B, S, T, V = 2, 7, 5, 20
VARIANTS = [("rnnsearch", "gru", "concat", 1), ("rnnencdec", "gru", "concat", 1),
            ("luong", "lstm", "dot", 1), ("luong", "lstm", "general", 1),
            ("luong", "gru", "concat", 1), ("rnnsearch", "lstm", "concat", 2),
            ("rnnencdec", "rnn", "concat", 2), ("luong", "lstm", "general", 3)]


def setup(model, cell, score, layers=1):
  src = jax.random.randint(jax.random.PRNGKey(0), (B, S), 1, V)
  valid = jnp.arange(S)[None] < jnp.array([[7], [4]])
  tgt = jax.random.randint(jax.random.PRNGKey(1), (B, T), 1, V)
  m = seq2seq.Seq2Seq(V, model=model, cell=cell, embed=8, hidden=16, score=score,
                      num_layers=layers)
  return m, m.init(jax.random.PRNGKey(2), src, valid, tgt), src, valid, tgt


@pytest.mark.parametrize("model,cell,score,layers", VARIANTS)
def test_teacher_forcing_equals_step_by_step_decoding(model, cell, score, layers):
  m, p, src, valid, tgt = setup(model, cell, score, layers)
  logits, aux = m.apply(p, src, valid, tgt)
  memory = m.apply(p, src, valid, method=m.encode)
  state = m.apply(p, memory, method=m.initial_state)
  for t in range(T):
    state, step_logits, w = m.apply(p, memory, state, tgt[:, t], method=m.decode_step)
    np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w, aux["attention"][:, t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model,cell,score,layers", VARIANTS)
def test_source_padding_changes_nothing(model, cell, score, layers):
  m, p, src, valid, tgt = setup(model, cell, score, layers)
  logits, aux = m.apply(p, src, valid, tgt)
  other, _ = m.apply(p, src.at[1, 4:].set(3), valid, tgt)
  np.testing.assert_allclose(other, logits, rtol=1e-5, atol=1e-5)
  if model != "rnnencdec":
    np.testing.assert_allclose(aux["attention"].sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.abs(aux["attention"][1, :, 4:]).max()) == 0.0


@pytest.mark.parametrize("model", ["rnnsearch", "rnnencdec", "luong"])
def test_every_layer_of_the_stacks_is_used(model):
  m, p, src, valid, tgt = setup(model, "gru", "concat", layers=2)
  logits, _ = m.apply(p, src, valid, tgt)
  for name in ("enc_fwd_1", "dec_1"):
    bumped = jax.tree.map(lambda x: x, p)
    bumped["params"][name]["hn"]["kernel"] += 0.5
    other, _ = m.apply(bumped, src, valid, tgt)
    assert float(jnp.abs(other - logits).max()) > 1e-4, name


def test_beam_search_finds_the_exhaustive_best_on_a_markov_model():
  vocab, eos, bos, max_len, alpha = 5, 1, 0, 4, 0.6
  table = jax.random.normal(jax.random.PRNGKey(3), (vocab, vocab)) * 2
  step = lambda state, tok: (state, table[tok])
  seqs, scores = decode.beam_search(step, jnp.zeros((2,)), bos, eos, beam=4,
                                    max_len=max_len, alpha=alpha)
  lp = np.asarray(jax.nn.log_softmax(table))
  every = []
  for n in range(1, max_len + 1):
    for seq in itertools.product(range(vocab), repeat=n):
      if seq[-1] == eos and eos not in seq[:-1]:
        logp = sum(lp[a, b] for a, b in zip((bos,) + seq[:-1], seq))
        every.append((logp / decode.length_penalty(n, alpha), seq))
  best_score, best_seq = max(every)
  np.testing.assert_allclose(scores[:, 0], best_score, rtol=1e-5)
  got = np.asarray(seqs[0, 0])
  assert tuple(got[:len(best_seq)]) == best_seq and not got[len(best_seq):].any()
  assert bool(jnp.all(scores[:, :-1] >= scores[:, 1:]))  # best first


@pytest.mark.parametrize("model", ["rnnsearch", "luong"])
def test_beam_returns_the_attention_of_its_best_hypothesis(model):
  """The weights the beam recorded along its winner == the teacher-forced
  attention on that winner (beams get reordered every step)."""
  m, p, src, valid, _ = setup(model, "gru", "concat")
  src = src * valid
  memory = m.apply(p, src, valid, method=m.encode)
  state = {"memory": memory, "dec": m.apply(p, memory, method=m.initial_state)}

  def step(state, token):
    dec, logits, w = m.apply(p, state["memory"], state["dec"], token,
                             method=m.decode_step)
    return {"memory": state["memory"], "dec": dec}, logits, w
  seqs, _, weights = decode.beam_search(step, state, 2, 1, beam=3, max_len=6)
  best = seqs[:, 0]
  tgt_in = jnp.concatenate([jnp.full((B, 1), 2), best[:, :-1]], 1)
  _, aux = m.apply(p, src, valid, tgt_in)
  for b in range(B):
    n = int((best[b] > 0).sum())  # up to and including EOS
    np.testing.assert_allclose(weights[b, 0, :n], aux["attention"][b, :n],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model,cell,score,layers", VARIANTS)
def test_matmul_flops_match_xla_cost_analysis_of_one_step(model, cell, score, layers):
  """At source and target length 1 every scan runs once, so XLA's count is
  exact; it adds the elementwise ops, a few percent at these widths."""
  m = seq2seq.Seq2Seq(512, model=model, cell=cell, embed=64, hidden=128, score=score,
                      num_layers=layers)
  x = jnp.ones((1, 1), jnp.int32)
  params = m.init(jax.random.PRNGKey(0), x, x > 0, x)
  cost = jax.jit(lambda p: m.apply(p, x, x > 0, x)).lower(params).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = seq2seq.matmul_flops(m, 1, 1)
  assert analytic <= cost["flops"] <= 1.1 * analytic
