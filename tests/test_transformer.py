"""The Transformer against independent references: the paper's position
formula, full recomputation for the key/value cache, examples run alone for
packing and padding."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.models import transformer
from attnlab.nn import blocks

V = 23


def small(**kw):
  kw = dict(d_model=16, num_heads=2, d_ff=32, enc_layers=2, dec_layers=2,
            dropout=0.0) | kw
  return transformer.Transformer(V, **kw)


def init(model, S=7, T=6):
  src = jax.random.randint(jax.random.PRNGKey(0), (2, S), 4, V)
  tgt = jax.random.randint(jax.random.PRNGKey(1), (2, T), 4, V)
  # jitted: op by op, initialising takes 20 s here (each op compiled alone)
  params = jax.jit(model.init)(jax.random.PRNGKey(2), src, src > 0, tgt)
  return params, src, tgt


def test_sinusoidal_positions_are_the_papers_formula():
  d = 8
  pe = np.asarray(blocks.sinusoidal_positions(jnp.arange(50), d))
  for pos in (0, 1, 17, 49):
    for i in range(d // 2):
      np.testing.assert_allclose(pe[pos, 2 * i], np.sin(pos / 10000 ** (2 * i / d)), atol=1e-5)
      np.testing.assert_allclose(pe[pos, 2 * i + 1], np.cos(pos / 10000 ** (2 * i / d)), atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"pre_norm": True}, {"learned_positions": True},
                                {"implementation": "chunked"}])
def test_cached_decoding_equals_full_recomputation(kw):
  model = small(**kw)
  params, src, tgt = init(model)
  valid = jnp.arange(src.shape[1])[None] < jnp.array([[7], [4]])
  src = src * valid
  full, aux = model.apply(params, src, valid, tgt, return_weights=True)
  memory = model.apply(params, src, valid, method=model.encode)
  state = model.apply(params, memory, 10, method=model.initial_state)
  decode = jax.jit(functools.partial(model.apply, method=model.decode_step))  # once, not per op
  for t in range(tgt.shape[1]):
    state, logits, w = decode(params, memory, state, tgt[:, t])
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(w, aux["attention_per_head"][:, :, :, t], atol=1e-5)


def test_packed_examples_do_not_see_each_other():
  """Two examples packed in one row (segment ids, per-segment positions)
  give the logits each gives alone."""
  model = small()
  params, _, _ = init(model)
  apply = jax.jit(model.apply)  # compiled once per shape: far faster than op by op
  rng = np.random.default_rng(0)
  a_src, b_src = rng.integers(4, V, 5), rng.integers(4, V, 3)
  a_tgt, b_tgt = rng.integers(4, V, 4), rng.integers(4, V, 6)

  def alone(s, t):
    s, t = jnp.asarray(s)[None], jnp.asarray(t)[None]
    return apply(params, s, s > 0, t)[0][0]
  row = lambda a, b, pad: jnp.asarray(np.concatenate([a, b, np.zeros(pad, int)]))[None]
  seg = lambda na, nb, pad: jnp.asarray([1] * na + [2] * nb + [0] * pad)[None]
  pos = lambda na, nb, pad: jnp.asarray(list(range(na)) + list(range(nb)) + [0] * pad)[None]
  src, tgt = row(a_src, b_src, 2), row(a_tgt, b_tgt, 1)
  logits, _ = apply(params, src, src > 0, tgt,
                    src_segments=seg(5, 3, 2), src_positions=pos(5, 3, 2),
                    tgt_segments=seg(4, 6, 1), tgt_positions=pos(4, 6, 1))
  np.testing.assert_allclose(logits[0, :4], alone(a_src, a_tgt), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits[0, 4:10], alone(b_src, b_tgt), rtol=1e-4, atol=1e-5)


def test_source_padding_changes_nothing():
  model = small()
  params, src, tgt = init(model)
  valid = jnp.arange(src.shape[1])[None] < jnp.array([[7], [4]])
  a, _ = model.apply(params, src * valid, valid, tgt)
  b, _ = model.apply(params, (src * valid).at[1, 4:].set(5), valid, tgt)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_output_layer_is_the_shared_embedding():
  """Changing the embedding row of a token that is never an input changes
  that token's logit column and nothing else."""
  model = small()
  params, _, _ = init(model)
  src = jax.random.randint(jax.random.PRNGKey(0), (2, 7), 4, V - 1)
  tgt = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 4, V - 1)
  assert "output" not in params["params"]
  logits, _ = model.apply(params, src, src > 0, tgt)
  bumped = jax.tree.map(lambda x: x, params)
  bumped["params"]["embed"]["embedding"] = params["params"]["embed"]["embedding"].at[V - 1].add(
      jax.random.normal(jax.random.PRNGKey(5), (16,)))  # not constant: LayerNorm output sums to 0
  other, _ = model.apply(bumped, src, src > 0, tgt)
  np.testing.assert_allclose(other[..., :V - 1], logits[..., :V - 1], rtol=1e-6)
  assert float(jnp.abs(other[..., V - 1] - logits[..., V - 1]).min()) > 1e-3


@pytest.mark.parametrize("S,T", [(1, 1), (5, 3)])
def test_matmul_flops_match_xla_cost_analysis(S, T):
  """No scans here, so XLA counts everything; it adds the elementwise ops
  (a few percent at these widths)."""
  model = transformer.Transformer(500, d_model=64, num_heads=4, d_ff=256,
                                  enc_layers=2, dec_layers=3, dropout=0.0)
  src, tgt = jnp.ones((1, S), jnp.int32), jnp.ones((1, T), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), src, src > 0, tgt)
  cost = jax.jit(lambda p: model.apply(p, src, src > 0, tgt)).lower(params).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = transformer.matmul_flops(model, S, T)
  assert analytic <= cost["flops"] <= 1.1 * analytic, (analytic, cost["flops"])


@pytest.mark.parametrize("scan", [False, True])
def test_gpt_cached_decoding_equals_full_recomputation(scan):
  from attnlab.models import gpt
  model = gpt.GPT(V, d_model=16, num_heads=2, d_ff=32, num_layers=2, max_len=16,
                  dropout=0.0, scan=scan)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, V)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), tokens)
  full, _ = jax.jit(model.apply)(params, tokens)
  state = model.apply(params, 2, 12, method=model.initial_state)
  decode = jax.jit(functools.partial(model.apply, method=model.decode_step))
  for t in range(tokens.shape[1]):
    state, logits = decode(params, state, tokens[:, t])
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-5)


def test_bert_masking_is_80_10_10_of_15_percent():
  from attnlab.models import bert
  tokens = jax.random.randint(jax.random.PRNGKey(0), (64, 512), 5, 1000)
  valid = jnp.arange(512)[None] < 400
  inputs, chosen = bert.mask_tokens(jax.random.PRNGKey(1), tokens, valid, mask_id=4,
                                    vocab_size=1000, first_regular=5)
  n = 64 * int(valid.sum())
  assert not bool(jnp.any(chosen & ~valid))
  assert abs(int(chosen.sum()) / n - 0.15) < 0.01
  masked = chosen & (inputs == 4)
  kept = chosen & (inputs == tokens)
  replaced = chosen & ~masked & ~kept
  c = int(chosen.sum())
  assert abs(int(masked.sum()) / c - 0.8) < 0.02
  assert abs(int(replaced.sum()) / c - 0.1) < 0.02
  assert abs(int(kept.sum()) / c - 0.1) < 0.02  # (a random draw may equal the token)
  assert bool(jnp.all(jnp.where(chosen, True, inputs == tokens)))  # others untouched


def test_bfloat16_policy_keeps_float32_weights_and_logits():
  """model.dtype=bfloat16: the same float32 parameters; matmuls in bfloat16
  give logits (float32) within bfloat16 rounding of the float32 model's,
  and the residual stream stays float32."""
  f32 = small(d_model=32, d_ff=64)
  bf16 = small(d_model=32, d_ff=64, dtype=jnp.bfloat16)
  params, src, tgt = init(f32)
  shapes = lambda p: jax.tree.map(lambda x: (x.shape, x.dtype), p)
  assert shapes(params) == shapes(init(bf16)[0])
  want, _ = f32.apply(params, src, src > 0, tgt)
  got, _ = bf16.apply(params, src, src > 0, tgt)
  assert got.dtype == jnp.float32
  err = np.abs(np.asarray(got) - np.asarray(want)).max()
  assert 1e-4 < err < 0.05 * np.abs(np.asarray(want)).max()  # rounded, not broken
  memory = bf16.apply(params, src, src > 0, method=bf16.encode)
  assert memory["h"].dtype == jnp.float32
