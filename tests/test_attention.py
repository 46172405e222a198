"""Attention variants against independent references and their properties."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.nn import analysis
from attnlab.nn import hard
from attnlab.nn import kernels
from attnlab.nn import multihead
from attnlab.nn import scores
from attnlab.nn import vision

B, T, H, D = 2, 13, 2, 4


def qkv(seed=0, tq=T, tk=T):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(ks[0], (B, tq, H, D)),
          jax.random.normal(ks[1], (B, tk, H, D)),
          jax.random.normal(ks[2], (B, tk, H, D)))


def naive_reference(q, k, v, allowed):
  """Written out with numpy loops over batch, head and query."""
  q, k, v, allowed = map(np.asarray, (q, k, v, allowed))
  out = np.zeros_like(q, dtype=np.float64)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      for i in range(q.shape[1]):
        cols = [j for j in range(k.shape[1]) if allowed[b, i, j]]
        if not cols:
          continue
        s = np.array([q[b, i, h] @ k[b, j, h] for j in cols]) / np.sqrt(q.shape[-1])
        w = np.exp(s - s.max())
        w /= w.sum()
        out[b, i, h] = sum(wj * v[b, j, h] for wj, j in zip(w, cols))
  return out


def masks():
  valid = jnp.arange(T)[None, :] < jnp.array([[T], [9]])
  seg = jnp.array([[0] * 5 + [1] * 8, [0] * 7 + [1] * 6])
  return {
      "none": kernels.Mask(),
      "padding": kernels.Mask(kv_valid=valid),
      "causal": kernels.Mask(causal=True),
      "causal_padding": kernels.Mask(causal=True, kv_valid=valid),
      "window": kernels.Mask(window=2),
      # padding as lengths (0: a row with no key at all): the structured xla path
      "lengths": kernels.Mask(kv_lengths=jnp.array([T, 0])),
      "causal_lengths": kernels.Mask(causal=True, kv_lengths=jnp.array([9, T])),
      "causal_window": kernels.Mask(causal=True, window=3),
      "segments": kernels.Mask(q_segments=seg, kv_segments=seg, causal=True),
  }


@pytest.mark.parametrize("name", list(masks()))
@pytest.mark.parametrize("impl", ["naive", "xla", "chunked"])
def test_implementations_match_a_loop_reference(name, impl):
  mask = masks()[name]
  q, k, v = qkv()
  allowed = np.broadcast_to(np.asarray(mask.dense(T, T))[:, 0], (B, T, T))
  out = kernels.dot_product_attention(q, k, v, mask, implementation=impl,
                                  q_chunk=4, kv_chunk=5)
  np.testing.assert_allclose(out, naive_reference(q, k, v, allowed),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(masks()))
def test_chunked_gradients_equal_naive(name):
  mask = masks()[name]
  q, k, v = qkv(1)
  w = jax.random.normal(jax.random.PRNGKey(9), (B, T, H, D))

  def loss(impl):
    return lambda q, k, v: jnp.sum(w * kernels.dot_product_attention(
        q, k, v, mask, implementation=impl, q_chunk=4, kv_chunk=3))
  g_naive = jax.grad(loss("naive"), argnums=(0, 1, 2))(q, k, v)
  g_chunk = jax.grad(loss("chunked"), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_naive, g_chunk):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["window", "window_causal", "window_padding",
                                  "window_segments"])
def test_banded_restricted_attention_matches_naive(name):
  valid = jnp.arange(T)[None, :] < jnp.array([[T], [9]])
  seg = jnp.array([[0] * 5 + [1] * 8, [0] * 7 + [1] * 6])
  mask = {"window": kernels.Mask(window=3),
          "window_causal": kernels.Mask(window=3, causal=True),
          "window_padding": kernels.Mask(window=2, kv_valid=valid),
          "window_segments": kernels.Mask(window=4, q_segments=seg, kv_segments=seg)}[name]
  q, k, v = qkv(2)
  np.testing.assert_allclose(
      kernels.dot_product_attention(q, k, v, mask, implementation="banded"),
      kernels.dot_product_attention(q, k, v, mask, implementation="naive"),
      rtol=1e-5, atol=1e-5)


def test_weights_rows_sum_to_one_and_masked_rows_to_zero():
  q, k, v = qkv()
  valid = jnp.arange(T)[None, :] < jnp.array([[T], [0]])  # batch 1: no keys
  _, w = kernels.dot_product_attention(q, k, v, kernels.Mask(kv_valid=valid, causal=True),
                                   return_weights=True)
  np.testing.assert_allclose(w[0].sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(w[1], 0.0)
  assert float(jnp.abs(jnp.triu(w[0, 0], 1)).max()) == 0.0


def test_local_window_covering_everything_is_global():
  q, k, v = qkv()
  for impl in ("naive", "chunked"):
    local = kernels.dot_product_attention(q, k, v, kernels.Mask(window=T), implementation=impl)
    full = kernels.dot_product_attention(q, k, v, implementation=impl)
    np.testing.assert_allclose(local, full, rtol=1e-6, atol=1e-6)


def mha_and_params(impl="xla", heads=2, dim=8):
  x = jax.random.normal(jax.random.PRNGKey(3), (B, T, dim))
  model = multihead.MultiHeadAttention(num_heads=heads, implementation=impl)
  return x, model, model.init(jax.random.PRNGKey(0), x)


def test_multi_head_equals_flax_module():
  x, model, params = mha_and_params()
  mask = kernels.Mask(causal=True)
  ours, _ = model.apply(params, x, mask=mask)
  flax_mha = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
  theirs = flax_mha.apply(params, x, x, mask=mask.dense(T, T))
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  # Same names, shapes and initial values (runs initialised before q, k
  # and v were fused start from the same parameters).
  theirs_init = flax_mha.init(jax.random.PRNGKey(0), x, x)
  assert jax.tree.structure(theirs_init) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, theirs_init, params)


@pytest.mark.parametrize("impl", ["naive", "xla", "chunked"])
def test_self_attention_is_permutation_equivariant(impl):
  x, model, params = mha_and_params(impl)
  perm = np.random.default_rng(0).permutation(T)
  out, _ = model.apply(params, x)
  out_perm, _ = model.apply(params, x[:, perm])
  np.testing.assert_allclose(out_perm, out[:, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["naive", "xla", "chunked"])
def test_causal_mask_blocks_gradient_from_the_future(impl):
  x, model, params = mha_and_params(impl)
  i = 5
  jac = jax.grad(lambda x: model.apply(params, x, mask=kernels.Mask(causal=True))[0][:, i].sum())(x)
  assert float(jnp.abs(jac[:, i + 1:]).max()) == 0.0
  assert float(jnp.abs(jac[:, :i + 1]).max()) > 0.0


@pytest.mark.parametrize("impl", ["naive", "xla", "chunked"])
def test_padding_never_changes_real_positions(impl):
  x, model, params = mha_and_params(impl)
  valid = jnp.arange(T)[None, :] < 9
  mask = kernels.Mask(kv_valid=jnp.broadcast_to(valid, (B, T)))
  out, _ = model.apply(params, x, mask=mask)
  noisy = x.at[:, 9:].set(100.0)
  out2, _ = model.apply(params, noisy, mask=mask)
  np.testing.assert_allclose(out[:, :9], out2[:, :9], rtol=1e-5, atol=1e-5)


def test_additive_score_is_bahdanau_eq6():
  q = jax.random.normal(jax.random.PRNGKey(0), (B, 3, 5))
  k = jax.random.normal(jax.random.PRNGKey(1), (B, 4, 6))
  score = scores.AdditiveScore(hidden=7)
  params = score.init(jax.random.PRNGKey(2), q, k)
  got = score.apply(params, q, k)
  p = jax.tree.map(np.asarray, params["params"])
  for b in range(B):
    for i in range(3):
      for j in range(4):
        e = np.tanh(np.asarray(q[b, i]) @ p["W"]["kernel"]
                    + np.asarray(k[b, j]) @ p["U"]["kernel"] + p["U"]["bias"])
        np.testing.assert_allclose(got[b, i, j], e @ p["v"][:, 0], rtol=1e-5)
  # U k projected once per sentence, as a decoder does, gives the same scores.
  uk = score.apply(params, k, method=score.project_keys)
  np.testing.assert_allclose(score.apply(params, q, keys_projected=uk), got, rtol=1e-6)


def test_bilinear_and_dot_scores():
  q = jax.random.normal(jax.random.PRNGKey(0), (B, 3, 5))
  k = jax.random.normal(jax.random.PRNGKey(1), (B, 4, 5))
  score = scores.BilinearScore()
  params = score.init(jax.random.PRNGKey(2), q, k)
  w = np.asarray(params["params"]["W"])
  np.testing.assert_allclose(score.apply(params, q, k),
                             np.einsum("bqd,de,bke->bqk", q, w, k), rtol=1e-5)
  np.testing.assert_allclose(scores.scaled_dot_score(q, k) * np.sqrt(5),
                             scores.dot_score(q, k), rtol=1e-5)
  ctx, w = scores.attend(scores.dot_score(q, k), k)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(ctx, np.einsum("bqk,bkd->bqd", w, k), rtol=1e-5)


def test_graves_window_is_the_mixture_formula_and_moves_forward():
  K, U, Dm = 3, 9, 4
  h = jax.random.normal(jax.random.PRNGKey(0), (B, 5))
  memory = jax.random.normal(jax.random.PRNGKey(1), (B, U, Dm))
  model = scores.GravesAttention(num_components=K)
  kappa0 = jnp.ones((B, K))
  params = model.init(jax.random.PRNGKey(2), h, kappa0, memory)
  w, kappa, phi = model.apply(params, h, kappa0, memory)
  p = params["params"]["window"]
  a_hat, b_hat, k_hat = np.split(np.asarray(h) @ p["kernel"] + p["bias"], 3, -1)
  want_kappa = 1 + np.exp(k_hat)
  np.testing.assert_allclose(kappa, want_kappa, rtol=1e-5)
  assert bool(jnp.all(kappa > kappa0))  # monotonic
  for b in range(B):
    for u in range(U):
      want = np.sum(np.exp(a_hat[b]) * np.exp(-np.exp(b_hat[b]) * (want_kappa[b] - u) ** 2))
      np.testing.assert_allclose(phi[b, u], want, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(w, np.einsum("bu,bud->bd", phi, memory), rtol=1e-5)


def test_hard_attention_samples_follow_the_weights_and_average_to_soft():
  weights = jnp.broadcast_to(jnp.array([0.1, 0.6, 0.3]), (4000, 1, 3))
  values = jnp.broadcast_to(jnp.array([[1.0], [2.0], [3.0]]), (4000, 3, 1))
  ctx, index, log_prob = hard.hard_attention(jax.random.PRNGKey(0), weights, values)
  freq = np.bincount(np.asarray(index).ravel(), minlength=3) / 4000
  np.testing.assert_allclose(freq, [0.1, 0.6, 0.3], atol=0.025)
  np.testing.assert_allclose(log_prob, np.log(np.array([0.1, 0.6, 0.3]))[index], rtol=1e-5)
  soft, _ = scores.attend(jnp.log(weights), values)
  np.testing.assert_allclose(ctx.mean(), soft.mean(), atol=0.03)


THETA = jnp.array([0.2, -0.4, 1.0, 0.0])
REWARDS = jnp.array([1.0, 3.0, -2.0, 0.5])


def _surrogate_grad(n, baseline, entropy_weight=0.0, rng=jax.random.PRNGKey(1)):
  """d(-loss)/d theta of the surrogate over n samples, and the samples."""
  def surrogate(t):
    w = jax.nn.softmax(t)[None, None]
    _, index, log_prob = hard.hard_attention(rng, jnp.broadcast_to(w, (n, 1, 4)),
                                            jnp.zeros((n, 4, 1)))
    loss, new_baseline = hard.reinforce_surrogate(
        log_prob, REWARDS[index[:, 0]], baseline, w, entropy_weight=entropy_weight)
    return -loss, (index[:, 0], new_baseline)
  return jax.grad(surrogate, has_aux=True)(THETA)


def test_reinforce_gradient_is_xu_et_al_eq_12_for_the_drawn_samples():
  """Exact for fixed samples: mean_i (r_i - b) d log p(s_i)/d theta, with
  d log softmax(theta)_s = onehot(s) - p; the entropy bonus adds
  lambda dH/d theta = -lambda p (log p + H); the baseline moves to
  0.9 b + 0.1 mean(r)."""
  p = jax.nn.softmax(THETA)
  grad, (index, new_baseline) = _surrogate_grad(64, 0.5)
  r = REWARDS[index]
  want = np.mean((np.asarray(r) - 0.5)[:, None] * (np.eye(4)[index] - p), 0)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(new_baseline, 0.9 * 0.5 + 0.1 * np.mean(r), rtol=1e-6)
  with_entropy, _ = _surrogate_grad(64, 0.5, entropy_weight=0.3)
  entropy = -np.sum(p * np.log(p))
  np.testing.assert_allclose(with_entropy - grad, 0.3 * -p * (np.log(p) + entropy),
                             rtol=1e-4, atol=1e-6)


def test_reinforce_estimator_is_unbiased():
  """Mean over 400k samples == d E[reward] / d theta, computed exactly for a
  4-location toy problem. Per-sample gradients have std < 3.5 here, so the
  standard error is < 0.006: atol 0.025 is over 4 of them."""
  exact = jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * REWARDS))(THETA)
  estimate, _ = _surrogate_grad(400_000, 0.5)
  np.testing.assert_allclose(estimate, exact, atol=0.025)


@pytest.mark.parametrize("name", ["lengths", "causal_lengths", "window", "causal", "causal_window"])
def test_structured_masks_reach_jax_without_a_dense_mask(name, monkeypatch):
  """The xla path hands lengths, causality and windows to
  jax.nn.dot_product_attention as such (so cuDNN can fuse them); outputs
  and gradients equal the dense-mask path."""
  mask = masks()[name]
  q, k, v = qkv(3)
  calls = []
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention",
                      lambda *a, **kw: calls.append(kw) or real(*a, **kw))
  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(
      kernels.dot_product_attention(q, k, v, mask, implementation=impl)))
  fast = jax.value_and_grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  assert calls and all(kw.get("mask") is None for kw in calls)
  dense = jax.value_and_grad(loss("naive"), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(dense)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("impl", ["naive", "xla"])
@pytest.mark.parametrize("name", ["none", "padding", "causal_lengths"])
def test_additive_bias_is_added_to_the_scaled_scores(impl, name):
  """softmax(q k^T / sqrt(d) + bias) v, bias [1, H, Tq, Tk] (Swin's relative
  position bias), against the formula written out with a dense mask."""
  mask = masks()[name]
  q, k, v = qkv(4)
  bias = jax.random.normal(jax.random.PRNGKey(5), (1, H, T, T))
  out = kernels.dot_product_attention(q, k, v, mask, bias=bias, implementation=impl)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D) + bias
  allowed = mask.dense(T, T)
  w = jnp.where(allowed, jax.nn.softmax(jnp.where(allowed, scores, -1e30), -1), 0.0)
  want = jnp.einsum("bhqk,bkhd->bqhd", w, v)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_bias_with_the_chunked_path_is_refused():
  q, k, v = qkv()
  with pytest.raises(ValueError, match="bias"):
    kernels.dot_product_attention(q, k, v, bias=jnp.zeros((1, H, T, T)), implementation="chunked")


def _grid_window_reference(x, params, heads, window, shift):
  """Swin's (shifted) window attention written on the whole image: token p
  sees token q iff, after the cyclic shift, they fall in the same window
  and the shift did not wrap either axis between them (so their offset is
  the same before and after it); the bias is the table entry of that
  offset. numpy, float64, every pair of the H x W grid at once."""
  x = np.asarray(x, np.float64)
  B, Hh, Ww, C = x.shape
  y, xx = np.meshgrid(np.arange(Hh), np.arange(Ww), indexing="ij")
  y, xx = y.ravel(), xx.ravel()
  ry, rx = (y - shift) % Hh, (xx - shift) % Ww
  same = (ry[:, None] // window == ry[None] // window) & (rx[:, None] // window == rx[None] // window)
  no_wrap = ((ry[:, None] - ry[None]) == (y[:, None] - y[None])) & (
      (rx[:, None] - rx[None]) == (xx[:, None] - xx[None]))
  allowed = same & no_wrap
  dy, dx = y[:, None] - y[None], xx[:, None] - xx[None]
  table = np.asarray(params["RelativePositionBias_0"]["table"], np.float64)
  idx = np.clip((dy + window - 1) * (2 * window - 1) + dx + window - 1, 0, len(table) - 1)
  bias = table[idx].transpose(2, 0, 1)  # [heads, HW, HW]; used where allowed
  p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()}
       for k, d in params["attention"].items()}
  tokens = x.reshape(B, Hh * Ww, C)
  proj = lambda n: np.einsum("btc,chd->bthd", tokens, p[n]["kernel"]) + p[n]["bias"]
  q, k, v = proj("query"), proj("key"), proj("value")
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]) + bias[None]
  s = np.where(allowed, s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", w, v)
  out = np.einsum("bqhd,hdc->bqc", out, p["out"]["kernel"]) + p["out"]["bias"]
  return out.reshape(B, Hh, Ww, C)


@pytest.mark.parametrize("impl", ["naive", "xla"])
@pytest.mark.parametrize("shift", [0, 2])
def test_shifted_window_attention_is_swin_on_the_whole_grid(shift, impl):
  """WindowAttention (partition, relative position bias, shift as segments)
  equals attention over every pair of the 8 x 12 map restricted to Swin's
  windows, with the bias looked up by offset (reference above)."""
  heads, window = 2, 4
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 12, 8))
  layer = vision.WindowAttention(heads, window, shift=shift, implementation=impl)
  params = layer.init(jax.random.PRNGKey(1), x)["params"]
  # A non-zero table, so that a wrong offset would show.
  params["RelativePositionBias_0"]["table"] = jax.random.normal(
      jax.random.PRNGKey(2), params["RelativePositionBias_0"]["table"].shape)
  out, _ = layer.apply({"params": params}, x)
  want = _grid_window_reference(x, params, heads, window, shift)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_window_partition_round_trip_and_regions():
  x = jnp.arange(2 * 8 * 12 * 3).reshape(2, 8, 12, 3)
  windows = vision.window_partition(x, 4)
  assert windows.shape == (2 * 2 * 3, 16, 3)
  np.testing.assert_array_equal(windows[1, :4, 0], x[0, 0, 4:8, 0])  # 2nd window, 1st row
  np.testing.assert_array_equal(vision.window_merge(windows, 4, 8, 12), x)
  regions = vision.shifted_window_regions(8, 12, 4, 2)
  # Unshifted-interior windows are one region; the last row/column of
  # windows is split where the roll wrapped (Swin's figure 4).
  assert len(set(regions[0].tolist())) == 1
  assert len(set(regions[-1].tolist())) == 4
  assert len(set(regions[2].tolist())) == 2 and len(set(regions[3].tolist())) == 2


def test_window_attention_refuses_a_map_that_is_no_multiple_of_the_window():
  with pytest.raises(ValueError, match="multiple of window"):
    vision.WindowAttention(2, 4).init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 8, 8)))


def test_attention_rollout_is_abnar_and_zuidema_written_out():
  """Rollout over 3 layers against a numpy loop: per layer the head mean,
  half identity for the residual, rows renormalised, multiplied in order."""
  rng = np.random.default_rng(0)
  w = rng.random((2, 3, 4, 5, 5))
  w /= w.sum(-1, keepdims=True)
  got = np.asarray(analysis.attention_rollout(jnp.asarray(w, jnp.float32)))
  for b in range(2):
    r = np.eye(5)
    for layer in range(3):
      a = 0.5 * w[b, layer].mean(0) + 0.5 * np.eye(5)
      a /= a.sum(1, keepdims=True)
      r = a @ r
    np.testing.assert_allclose(got[b], r, rtol=1e-5)
    np.testing.assert_allclose(got[b].sum(1), 1.0, rtol=1e-5)
