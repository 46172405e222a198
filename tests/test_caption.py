"""Show, Attend and Tell's decoder (attnlab/models/show_attend_tell.py)
against its formulas and against itself step by step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import decode
from attnlab.models import show_attend_tell as sat
from attnlab.models import vit

V, B, T = 11, 3, 5


def model(attention="soft", expected_prob=0.5):
  backbone = vit.ViT(num_classes=0, width=16, depth=1, mlp_dim=32, num_heads=2, patch=4,
                     image_size=16)
  return sat.ShowAttendTell(V, backbone, embed=8, hidden=12, attention_dim=10,
                            attention=attention, expected_prob=expected_prob)


@pytest.fixture(scope="module")
def setup():
  images = jax.random.normal(jax.random.PRNGKey(0), (B, 16, 16, 3))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, V)
  params = jax.jit(model().init)(jax.random.PRNGKey(2), images, tokens)
  return images, tokens, params


def test_attention_is_over_the_patch_grid_and_sums_to_one(setup):
  images, tokens, params = setup
  logits, aux = jax.jit(model().apply)(params, images, tokens)
  assert logits.shape == (B, T, V)
  assert aux["attention"].shape == (B, T, 16)  # 4 x 4 patches, no class token
  np.testing.assert_allclose(aux["attention"].sum(-1), 1.0, rtol=1e-6)
  assert np.all(aux["attention"] > 0)


def test_doubly_stochastic_penalty_is_its_formula():
  w = jax.random.dirichlet(jax.random.PRNGKey(0), jnp.ones(7), (2, 4))  # [B, T, L]
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  want = np.mean([sum((1 - sum(float(w[b, t, i]) for t in range(4) if mask[b, t])) ** 2
                      for i in range(7)) for b in range(2)])
  np.testing.assert_allclose(sat.doubly_stochastic_penalty(w, jnp.asarray(mask)), want,
                             rtol=1e-5)


def test_step_by_step_decoding_equals_teacher_forcing(setup):
  images, tokens, params = setup
  m = model()
  want, aux = m.apply(params, images, tokens)

  def by_steps(params):
    memory = m.apply(params, images, method=m.encode)
    state = m.apply(params, memory, method=m.initial_state)
    logits, weights = [], []
    for t in range(T):
      state, step_logits, w, _ = m.apply(params, memory, state, tokens[:, t],
                                         method=m.decode_step)
      logits.append(step_logits)
      weights.append(w)
    return jnp.stack(logits, 1), jnp.stack(weights, 1)
  got, got_weights = jax.jit(by_steps)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_weights, aux["attention"], rtol=1e-5, atol=1e-7)


def test_hard_attention_samples_a_location_or_takes_the_expectation(setup):
  """expected_prob 1: always the expectation, so the soft model's logits
  and no score; 0: always a sampled location, log p(s) = log alpha_s < 0,
  and other logits than soft attention's."""
  images, tokens, params = setup
  soft, _ = model().apply(params, images, tokens)
  rng = jax.random.PRNGKey(3)
  always_expected, aux = model("hard", 1.0).apply(params, images, tokens, rng=rng)
  np.testing.assert_allclose(always_expected, soft, rtol=1e-6)
  np.testing.assert_array_equal(aux["log_prob"], 0.0)
  sampled, aux = model("hard", 0.0).apply(params, images, tokens, rng=rng)
  assert np.all(aux["log_prob"] < 0)
  # Each log p(s_t) is the log of one of that step's attention weights.
  logw = np.log(np.asarray(aux["attention"]))
  assert np.all(np.min(np.abs(logw - np.asarray(aux["log_prob"])[..., None]), -1) < 1e-5)
  assert not np.allclose(sampled, soft)
  # Without an rng (decoding), hard attention decodes with the expectation.
  np.testing.assert_allclose(model("hard").apply(params, images, tokens)[0], soft, rtol=1e-6)


def beam(m, params, images, beam_size, max_len):
  memory = m.apply(params, images, method=m.encode)
  state = {"memory": memory, "dec": m.apply(params, memory, method=m.initial_state)}

  def step(state, token):
    dec, logits, w, _ = m.apply(params, state["memory"], state["dec"], token,
                                method=m.decode_step)
    return {"memory": state["memory"], "dec": dec}, logits, w
  return decode.beam_search(step, state, BOS, EOS, beam=beam_size, max_len=max_len)


BOS, EOS = 2, 1


def test_beam_search_is_exhaustive_search_when_it_keeps_every_prefix(setup):
  """Beam V over captions of at most 2 words keeps every first word, so it
  must return the best of all 1 + V captions (scored by teacher forcing,
  log p / GNMT's length penalty 0.6)."""
  images, _, params = setup
  m = model()
  seqs, scores, _ = beam(m, params, images, V, 2)
  every = [(EOS,)] + [(w, EOS) for w in range(V) if w != EOS]
  for b in range(B):
    best = max(every, key=lambda seq: float(teacher_forced_logp(m, params, images[b:b + 1], seq)
                                            / decode.length_penalty(len(seq), 0.6)))
    got = tuple(int(t) for t in seqs[b, 0] if t)
    assert got == tuple(t for t in best if t), (b, got, best)
    want = teacher_forced_logp(m, params, images[b:b + 1], best) / decode.length_penalty(
        len(best), 0.6)
    np.testing.assert_allclose(scores[b, 0], want, rtol=1e-5)


def teacher_forced_logp(m, params, image, seq):
  tokens_in = jnp.asarray([[BOS, *seq[:-1]]])
  logits, _ = m.apply(params, image, tokens_in)
  logp = jax.nn.log_softmax(logits[0])
  return sum(logp[t, w] for t, w in enumerate(seq))


def test_beam_returns_the_per_word_attention_of_its_best_caption(setup):
  images, _, params = setup
  m = model()
  seqs, _, weights = beam(m, params, images, 3, 6)
  best = seqs[:, 0]
  _, aux = m.apply(params, images, jnp.concatenate([jnp.full((B, 1), BOS), best[:, :-1]], 1))
  for b in range(B):
    n = int((best[b] > 0).sum())
    np.testing.assert_allclose(weights[b, 0, :n], aux["attention"][b, :n], rtol=1e-5,
                               atol=1e-6)
