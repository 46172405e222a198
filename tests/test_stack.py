"""The shared layer stack (attnlab/nn/blocks.Stack): scanned and
unscanned layers are the same function, rematerialisation changes memory and
not values, cached decoding works in both layouts, every layer's attention
is returned on request, and unscanned parameters keep their old names."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.models import bert, gpt, transformer
from attnlab.nn import kernels
from attnlab.nn import multihead
from attnlab.nn import blocks

V = 40
TINY = dict(d_model=16, num_heads=2, d_ff=32, dropout=0.0)


def to_scanned(params, prefixes):
  p = dict(params["params"])
  for prefix in prefixes:
    p = blocks.scanned_layout(p, prefix)
  return {"params": p}


def assert_trees_close(a, b, rtol, atol):
  """Leaf by leaf; atol is relative to the leaf's largest entry (float32
  sums in another order differ by that much in the smallest entries)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol * max(1.0, float(np.abs(y).max())))


def translation_inputs():
  src = jax.random.randint(jax.random.PRNGKey(0), (2, 7), 1, V)
  src = src.at[1, 5:].set(0)  # padding
  tgt = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 1, V)
  return src, tgt


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_transformer_equals_unscanned_outputs_and_gradients(remat):
  src, tgt = translation_inputs()
  plain = transformer.Transformer(V, **TINY, enc_layers=3, dec_layers=2, pre_norm=True)
  # jitted throughout: op by op, each of hundreds of ops is compiled alone
  params = jax.jit(plain.init)(jax.random.PRNGKey(2), src, src > 0, tgt)
  scanned = transformer.Transformer(V, **TINY, enc_layers=3, dec_layers=2, pre_norm=True,
                                    scan=True, remat=remat)
  sparams = to_scanned(params, ["encoder", "decoder"])
  # the converted tree is exactly what the scanned model initialises
  expect = jax.eval_shape(lambda: scanned.init(jax.random.PRNGKey(2), src, src > 0, tgt))
  assert jax.tree.structure(expect) == jax.tree.structure(sparams)
  assert [x.shape for x in jax.tree.leaves(expect)] == [x.shape for x in jax.tree.leaves(sparams)]

  def loss(model):
    return lambda p: jnp.sum(model.apply(p, src, src > 0, tgt)[0] ** 2)
  np.testing.assert_allclose(jax.jit(scanned.apply)(sparams, src, src > 0, tgt)[0],
                             jax.jit(plain.apply)(params, src, src > 0, tgt)[0],
                             rtol=1e-5, atol=1e-5)
  grads = jax.jit(jax.grad(loss(plain)))(params)
  sgrads = jax.jit(jax.grad(loss(scanned)))(sparams)
  assert_trees_close(to_scanned(grads, ["encoder", "decoder"]), sgrads, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_no_value_of_an_unscanned_gpt(remat):
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, V)
  plain = gpt.GPT(V, **TINY, num_layers=2, max_len=16)
  params = jax.jit(plain.init)(jax.random.PRNGKey(1), tokens)
  remade = gpt.GPT(V, **TINY, num_layers=2, max_len=16, remat=remat)
  loss = lambda model: lambda p: jnp.sum(model.apply(p, tokens)[0] ** 2)
  assert_trees_close(jax.jit(jax.grad(loss(remade)))(params),
                     jax.jit(jax.grad(loss(plain)))(params), rtol=1e-5, atol=1e-6)


def test_remat_policy_saves_what_it_says():
  """jax's own account of the activations kept for the backward pass
  (print_saved_residuals, the parameters left out): "full" keeps the least,
  "dots" the matmul outputs as well, "none" everything."""
  import contextlib
  import io
  import re
  from jax.ad_checkpoint import print_saved_residuals
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, V)
  params = gpt.GPT(V, **TINY, num_layers=2, max_len=16).init(jax.random.PRNGKey(1), tokens)

  def saved_floats(remat):
    model = gpt.GPT(V, **TINY, num_layers=2, max_len=16, remat=remat)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      print_saved_residuals(lambda p: jnp.sum(model.apply(p, tokens)[0] ** 2), params)
    shapes = [m[1] for line in out.getvalue().splitlines()
              if "from the argument" not in line
              for m in [re.match(r"f32\[([\d,]*)\]", line)] if m]
    return sum(int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes)
  none, dots, full = (saved_floats(r) for r in ("none", "dots", "full"))
  print("saved floats: full", full, "dots", dots, "none", none)
  assert full < dots < none, (full, dots, none)


def test_scanned_cached_decoding_equals_full_recomputation():
  src, tgt = translation_inputs()
  model = transformer.Transformer(V, **TINY, enc_layers=2, dec_layers=2, scan=True)
  params = jax.jit(model.init)(jax.random.PRNGKey(2), src, src > 0, tgt)
  full, aux = jax.jit(functools.partial(model.apply, return_weights=True))(
      params, src, src > 0, tgt)
  memory = model.apply(params, src, src > 0, method=model.encode)
  state = model.apply(params, memory, 10, method=model.initial_state)
  # layers on axis 1 of every cache leaf: beam search reorders axis 0; then
  # heads before positions [B, layers, H, L, Dh], as attention reads them
  assert state["cache"]["kv"]["k"].shape == (2, 2, 2, 10, 8)
  decode = jax.jit(functools.partial(model.apply, method=model.decode_step))
  for t in range(tgt.shape[1]):
    state, logits, w = decode(params, memory, state, tgt[:, t])
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w, aux["attention_per_head"][:, :, :, t], rtol=1e-4,
                               atol=1e-6)

  # GPT's scanned cache: tests/test_transformer.py, parametrised by scan


def test_every_layers_attention_weights_on_request():
  """aux holds each layer's weights; layer 0's equal its attention module
  applied by hand to the embedded input, and causal rows are causal."""
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, V)
  for scan in (False, True):
    model = gpt.GPT(V, **TINY, num_layers=3, max_len=16, scan=scan)
    params = model.init(jax.random.PRNGKey(1), tokens)
    _, aux = model.apply(params, tokens, return_weights=True)
    w = aux["self_attention"]
    assert w.shape == (2, 3, 2, 9, 9)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.abs(jnp.triu(w, 1)).max()) == 0.0
  p = params["params"]
  first = jax.tree.map(lambda x: x[0], p["layer_scan"])
  x = model.apply(params, tokens, jnp.arange(9)[None], False, method=model._embed)
  ln = blocks.nn.LayerNorm().apply({"params": first["self_norm"]}, x)
  mha = multihead.MultiHeadAttention(2)
  _, expect = mha.apply({"params": first["self_attention"]}, ln,
                        mask=kernels.Mask(causal=True), return_weights=True)
  np.testing.assert_allclose(w[:, 0], expect, rtol=1e-5, atol=1e-6)

  b = bert.BERT(V, **TINY, num_layers=2, max_len=16)
  bp = b.init(jax.random.PRNGKey(2), tokens, tokens > 0)
  _, aux = b.apply(bp, tokens, tokens > 0, return_weights=True)
  assert aux["self_attention"].shape == (2, 2, 2, 9, 9) and aux["pooled"].shape == (2, 16)


def test_unscanned_parameters_keep_their_names():
  """Checkpoints written before the stack existed name layers like this;
  the shared scope keeps those names, so they still load."""
  src, tgt = translation_inputs()
  t = transformer.Transformer(V, **TINY, enc_layers=2, dec_layers=1, pre_norm=True)
  names = set(jax.eval_shape(lambda: t.init(jax.random.PRNGKey(0), src, src > 0, tgt))
              ["params"])
  assert names == {"embed", "encoder_0", "encoder_1", "decoder_0", "encoder_norm",
                   "decoder_norm"}
  g = gpt.GPT(V, **TINY, num_layers=2, max_len=16)
  names = set(jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), src))["params"])
  assert names == {"embed", "pos_embed", "layer_0", "layer_1", "final_norm"}
  layer = set(jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), src))["params"]["layer_0"])
  assert layer == {"self_attention", "self_norm", "ffn", "ffn_norm"}


def test_layouts_convert_both_ways():
  g = gpt.GPT(V, **TINY, num_layers=3, max_len=16)
  tokens = jnp.ones((1, 4), jnp.int32)
  p = g.init(jax.random.PRNGKey(0), tokens)["params"]
  back = blocks.unscanned_layout(blocks.scanned_layout(p, "layer"), "layer")
  assert jax.tree.structure(back) == jax.tree.structure(p)
  assert_trees_close(back, p, rtol=0, atol=0)


@pytest.mark.parametrize("scan", [False, True])
def test_stochastic_depth_keeps_or_drops_each_rows_branches_at_the_layers_rate(scan):
  """Drop path: in layer l each row's attention and FFN branches are either
  kept, scaled by 1 / (1 - p_l), or dropped whole, p_l rising linearly from
  0 at the first layer to `drop_path` at the last (DeiT). Checked row by row
  against the layers computed by hand from their own sub-modules for every
  keep/drop choice; evaluation is the stack without it."""
  L, B, rate = 3, 64, 0.5
  args = dict(num_layers=L, num_heads=2, d_ff=32, dropout=0.0, pre_norm=True, scan=scan)
  stack = blocks.Stack(**args, drop_path=rate)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, 5, 16))
  variables = stack.init(jax.random.PRNGKey(1), x, kernels.Mask())
  np.testing.assert_array_equal(stack.apply(variables, x, kernels.Mask())[0],
                                blocks.Stack(**args).apply(variables, x, kernels.Mask())[0])
  y = stack.apply(variables, x, kernels.Mask(), train=True, rngs={"dropout": jax.random.PRNGKey(2)})[0]

  params = variables["params"]
  layer_params = [jax.tree.map(lambda a: a[i], params["layer_scan"]) if scan
                  else params[f"layer_{i}"] for i in range(L)]
  layer = blocks.Layer(2, 32, dropout=0.0, pre_norm=True)
  attend = lambda m, h: m.self_attention(m.norms["self_norm"](h), mask=kernels.Mask())[0]
  ffn = lambda m, h: m.ffn(m.norms["ffn_norm"](h))
  rates = [rate * i / (L - 1) for i in range(L)]  # 0, 0.25, 0.5

  def by_hand(keep):  # keep[l] = (attention kept, FFN kept) for every row
    h = x
    for p, r, (a, f) in zip(layer_params, rates, keep):
      h = h + a * layer.apply({"params": p}, h, method=attend) / (1 - r)
      h = h + f * layer.apply({"params": p}, h, method=ffn) / (1 - r)
    return h

  choices = [((1, 1), k1, k2) for k1 in np.ndindex(2, 2) for k2 in np.ndindex(2, 2)]
  match = np.stack([np.all(np.isclose(by_hand(c), y, atol=1e-5), axis=(1, 2))
                    for c in choices], 1)
  assert (match.sum(1) == 1).all(), "every row is one keep/drop choice"
  dropped = 2 * B - np.array([[sum(choices[j][l]) for j in match.argmax(1)]
                              for l in range(L)]).sum(1)
  # Branches dropped per layer out of 2B = 128: none, ~32 (p = 0.25), ~64 (0.5).
  assert dropped[0] == 0
  assert abs(dropped[1] - 32) < 20 and abs(dropped[2] - 64) < 24, dropped
