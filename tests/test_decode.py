"""The fast decoding paths of attnlab/decode.py (caches grown in length
buckets, fixed inputs kept out of the reordered state) against the beam
search as it was (tests/reference_decode.py) and against one loop over a
full-length cache."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import decode
from attnlab import main as main_lib
from attnlab.data import tokenizer as tok_lib
from experiments import translate

import reference_decode

V = 13  # a small vocabulary: random weights end hypotheses (EOS) often


def test_length_buckets_double_from_16_and_end_at_the_longest_output():
  assert decode.length_buckets(63) == [16, 32, 63]
  assert decode.length_buckets(64) == [16, 32, 64]
  assert decode.length_buckets(10) == [10]
  assert decode.length_buckets(100, start=20) == [32, 64, 100]  # a prompt of 20


def experiment(spec, scale, **model):
  config, _ = main_lib.parse_config(["--config", spec])
  config.model.update(model)
  config.decode.update(beam=4, alpha=0.6, extra_len=30)  # outputs up to 38: 3 buckets
  config.data.vocab_size = V
  exp = translate.Experiment(config, None, read_data=False)
  params = jax.jit(exp.init, static_argnums=1)(jax.random.PRNGKey(1), 2)["params"]
  # Weights scaled (chosen so that some hypotheses end early, some late and
  # some never): peaked, unequal next-token distributions.
  params = jax.tree.map(lambda p: scale * p, params)
  return exp, params


SOURCES = np.array([[5, 6, 7, 8, 9, 10, 11, 12], [7, 8, 9, 0, 0, 0, 0, 0],
                    [12, 11, 4, 4, 0, 0, 0, 0]], np.int32)


@pytest.mark.parametrize("spec,scale,model", [
    ("configs/wmt.py:ding,runlocal=True", 3, {}),
    ("configs/wmt.py:ding,runlocal=True", 1, {"scan": True, "dec_layers": 2}),
    ("configs/seq2seq.py:model=rnnsearch,data=ding,runlocal=True", 3, {}),
])
def test_beam_search_returns_what_the_reference_returns(spec, scale, model):
  """Hypotheses exactly, scores and the attention along the best one to
  float rounding (softmax over a 16-, 32- or 38-slot cache)."""
  exp, params = experiment(spec, scale, **model)
  src = jnp.asarray(SOURCES)
  max_len = src.shape[1] + exp.config.decode.extra_len
  fast = jax.jit(lambda p, s: exp._beam(p, {"src": s}, alignments=True))(params, src)
  seqs, scores, weights = jax.jit(lambda p, s: reference_decode.translate_batch(
      exp.model, p, s, tok_lib.BOS, tok_lib.EOS, 4, max_len, 0.6, alignments=True))(params, src)
  np.testing.assert_array_equal(fast["tokens"], seqs[:, 0])
  np.testing.assert_allclose(fast["weights"], weights[:, 0], atol=1e-5)
  best = np.asarray(seqs[:, 0])
  ended = (best == tok_lib.EOS).any(1)
  length = np.where(ended, (best == tok_lib.EOS).argmax(1) + 1, max_len)
  assert ended.any() and length.max() > 16, length  # EOS, and past the first bucket
  out = jax.jit(exp.beam_search)(params, src)  # every beam, with its score
  np.testing.assert_array_equal(out[0], seqs)
  np.testing.assert_allclose(out[1], scores, rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampling_in_buckets_equals_one_loop_over_a_full_cache(temperature):
  from attnlab.models import gpt
  model = gpt.GPT(V, d_model=16, num_heads=2, d_ff=32, num_layers=2, max_len=64,
                  dropout=0.0)
  prompt = jnp.array([[3, 4, 5, 6, 7]])
  params = jax.jit(model.init)(jax.random.PRNGKey(1), prompt)
  step = lambda state, token: model.apply(params, state, token, method=model.decode_step)
  rng, length, start = jax.random.PRNGKey(2), 40, prompt.shape[1] - 1

  @functools.partial(jax.jit, static_argnums=0)
  def run(bucketed):
    state = model.apply(params, 1, start if bucketed else start + length,
                        method=model.initial_state)
    for t in range(start):
      state, _ = step(state, prompt[:, t])
    return decode.sample(step, state, prompt[:, -1], length, rng, temperature,
                         grow=model.grow_state if bucketed else None, start=start)
  (tokens, state), (full, full_state) = run(True), run(False)
  np.testing.assert_array_equal(tokens, full)
  assert state["kv"][0]["k"].shape[2] == start + length  # [B, H, L, Dh]
  np.testing.assert_allclose(state["kv"][0]["k"], full_state["kv"][0]["k"], atol=1e-6)
