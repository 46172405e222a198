"""DINO (Caron et al. 2021): the projection head, the loss, schedules and
centre against independent statements of the paper's formulas, and the
collapse that centring prevents."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.models import dino_head


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_head_is_mlp_bottleneck_l2_then_weight_normalised_linear(norm_last_layer):
  """By hand: GELU (exact) MLP, bottleneck L2-normalised, times a kernel
  whose columns are scaled to norm g (1 when the norm is fixed)."""
  head = dino_head.DINOHead(out_dim=10, hidden=32, bottleneck=8, norm_last_layer=norm_last_layer)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16))
  p = head.init(jax.random.PRNGKey(1), x)["params"]
  h = x
  for i in range(2):
    h = h @ p[f"mlp_{i}"]["kernel"] + p[f"mlp_{i}"]["bias"]
    h = 0.5 * h * (1 + jax.scipy.special.erf(h / np.sqrt(2)))
  h = h @ p["mlp_2"]["kernel"] + p["mlp_2"]["bias"]
  h = h / np.linalg.norm(h, axis=-1, keepdims=True)
  v = p["last_layer"]["kernel"]
  g = 1.0 if norm_last_layer else p["last_layer_scale"]["last_layer/kernel/scale"]
  want = h @ (g * v / np.linalg.norm(v, axis=0, keepdims=True))
  np.testing.assert_allclose(head.apply({"params": p}, x), want, rtol=1e-5, atol=1e-6)
  assert ("last_layer_scale" in p) == (not norm_last_layer)


def test_loss_is_the_mean_cross_entropy_over_pairs_of_different_views():
  """The authors' double loop: each teacher (global) view against every
  other student view, -sum P_t log P_s averaged over rows, then over pairs."""
  from experiments import dino
  rng = np.random.default_rng(0)
  V, B, K = 5, 3, 7
  s, t, c = rng.normal(size=(V, B, K)), rng.normal(size=(2, B, K)), rng.normal(size=K)
  total, terms = 0.0, 0
  for q in range(2):
    p_t = np.exp((t[q] - c) / 0.04)
    p_t /= p_t.sum(-1, keepdims=True)
    for v in range(V):
      if v == q:
        continue
      log_p_s = s[v] / 0.1 - np.log(np.exp(s[v] / 0.1).sum(-1, keepdims=True))
      total += np.mean(np.sum(-p_t * log_p_s, -1))
      terms += 1
  loss, monitors = dino.dino_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(c), 0.1, 0.04)
  np.testing.assert_allclose(loss, total / terms, rtol=1e-5)
  p = np.exp((t - c) / 0.04)
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(monitors["teacher_entropy"], np.mean(-np.sum(p * np.log(p), -1)),
                             rtol=1e-4)
  # The gradient reaches the student only.
  g_s, g_t = jax.grad(lambda a, b: dino.dino_loss(a, b, c, 0.1, 0.04)[0], (0, 1))(
      jnp.asarray(s), jnp.asarray(t))
  assert np.abs(g_s).sum() > 0 and not np.asarray(g_t).any()


def test_schedules_and_centre_are_their_formulas():
  from experiments import dino
  np.testing.assert_allclose([dino.cosine(0.996, 1.0, s, 100) for s in (0, 50, 100, 150)],
                             [0.996, 0.998, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose([dino.cosine(0.04, 0.4, s, 10) for s in (0, 5, 10)],
                             [0.04, 0.22, 0.4], rtol=1e-5)
  np.testing.assert_allclose([dino.teacher_temperature(s, 30, 0.04, 0.07) for s in (0, 15, 30, 99)],
                             [0.04, 0.055, 0.07, 0.07], rtol=1e-5)
  t = np.random.default_rng(1).normal(size=(2, 4, 3))
  c = np.ones(3)
  np.testing.assert_allclose(dino.update_center(c, t, 0.9),
                             0.9 * c + 0.1 * t.reshape(8, 3).mean(0), rtol=1e-6)


@pytest.mark.parametrize("centring", [True, False])
def test_centring_and_sharpening_prevent_the_collapse_that_sharpening_alone_causes(centring):
  """Caron et al., section 5.3 / Figure 7, in miniature: a student MLP on
  structureless Gaussian inputs (4 noisy views each), an EMA teacher,
  teacher temperature 0.04. Without centring every input lands on one
  output dimension (teacher entropy and KL -> 0: collapse); with it the
  teacher spreads the inputs over the dimensions and stays uncertain."""
  import optax
  from experiments import dino
  K, D, B = 16, 32, 128
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {"w1": jax.random.normal(k1, (D, 64)) / np.sqrt(D), "b1": jnp.zeros(64),
            "w2": jax.random.normal(k2, (64, K)) / 8, "b2": jnp.zeros(K)}
  net = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
  tx = optax.adam(3e-2)

  @jax.jit
  def step(params, teacher, center, opt, views):
    def loss(p):
      t = net(teacher, views[:2])
      out = dino.dino_loss(net(p, views), t, center, 0.1, 0.04)
      return out[0], (t, out[1])
    (_, (t, monitors)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    params = optax.apply_updates(params, updates)
    new_center = dino.update_center(center, t, 0.9) if centring else center
    return params, dino.ema(teacher, params, 0.9), new_center, opt, monitors, t

  teacher, center, opt = params, jnp.zeros(K), tx.init(params)
  rng = np.random.default_rng(1)
  for _ in range(500):
    x = rng.normal(size=(B, D))
    views = jnp.asarray(np.stack([x + 0.5 * rng.normal(size=(B, D)) for _ in range(4)]),
                        jnp.float32)
    params, teacher, center, opt, monitors, t = step(params, teacher, center, opt, views)
  used = len(np.unique(np.argmax(np.asarray(t[0] - center), -1)))
  if centring:
    assert monitors["teacher_entropy"] > 0.3 and monitors["kl"] > 0.5 and used >= 12
  else:
    assert monitors["teacher_entropy"] < 1e-3 and monitors["kl"] < 1e-3 and used == 1
