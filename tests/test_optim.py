"""Learning-rate schedules against their formulas."""
import math

import ml_collections
import numpy as np

from attnlab import optim


def cfg(**kw):
  base = dict(name="adam", lr=1.0, schedule="cosine", warmup_steps=10, b1=0.9,
              b2=0.98, eps=1e-9, weight_decay=0.0, clip_norm=0.0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_rsqrt_is_vaswani_eq3():
  d_model, warmup = 512, 4000
  lr = optim.schedule(cfg(schedule="rsqrt", lr=d_model ** -0.5,
                          warmup_steps=warmup), 100_000)
  for step in (0, 1, 100, 3999, 4000, 4001, 50_000):
    s = step + 1  # the paper counts steps from 1
    want = d_model ** -0.5 * min(s ** -0.5, s * warmup ** -1.5)
    np.testing.assert_allclose(float(lr(step)), want, rtol=1e-6)


def test_warmup_then_cosine():
  lr = optim.schedule(cfg(), 110)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10)], [0, 0.5, 1.0],
                             atol=1e-6)
  for s in (10, 35, 60, 110):
    want = 0.5 * (1 + math.cos(math.pi * (s - 10) / 100))
    np.testing.assert_allclose(float(lr(s)), want, atol=1e-6)


def test_clipping_bounds_the_update():
  import jax.numpy as jnp
  params = {"w": jnp.zeros(4)}
  tx, _ = optim.make_optimizer(cfg(name="sgd", b1=0.0, schedule="constant",
                                   warmup_steps=0, clip_norm=1.0), 10, params)
  grads = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.6, -0.8, 0, 0], rtol=1e-6)


# --- per-parameter rules ------------------------------------------------------
import jax
import jax.numpy as jnp
import pytest

from attnlab.config import NO_DECAY, ConfigError


def toy_params():
  return {"dense": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)},
          "norm": {"scale": jnp.full((2,), 2.0)},
          "head": {"kernel": jnp.full((2,), 2.0)},
          "embed": {"embedding": jnp.full((3,), 2.0)}}


def rules_cfg(**kw):
  return cfg(schedule="constant", warmup_steps=0, lr=0.1, weight_decay=0.5,
             lr_mults=(("head/.*", 10.0),), wd_mults=NO_DECAY,
             frozen=("embed/.*",), **kw)


def step(config, params, grads):
  tx, _ = optim.make_optimizer(config, 10, params)
  updates, state = tx.update(grads, tx.init(params), params)
  return optax_apply(params, updates), state


def optax_apply(params, updates):
  return jax.tree.map(lambda p, u: p + u, params, updates)


def test_sgd_rules_give_the_update_by_hand():
  """SGD + L2: p - lr * lr_mult * (g + wd * wd_mult * p); frozen: p."""
  params = toy_params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
  new, _ = step(rules_cfg(name="sgd", b1=0.0), params, grads)
  lr, wd, p, g = 0.1, 0.5, 2.0, 3.0
  np.testing.assert_allclose(new["dense"]["kernel"], p - lr * (g + wd * p), rtol=1e-6)
  np.testing.assert_allclose(new["dense"]["bias"], p - lr * g, rtol=1e-6)  # no decay
  np.testing.assert_allclose(new["norm"]["scale"], p - lr * g, rtol=1e-6)  # no decay
  np.testing.assert_allclose(new["head"]["kernel"], p - 10 * lr * (g + wd * p), rtol=1e-6)
  np.testing.assert_array_equal(new["embed"]["embedding"], params["embed"]["embedding"])


def test_adamw_rules_decouple_decay_and_hold_no_state_for_frozen():
  """AdamW's first step: m/sqrt(v) = g/|g| (bias-corrected), so the update
  is -lr * lr_mult * (sign(g) + wd * wd_mult * p)."""
  params = toy_params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, -3.0), params)
  config = rules_cfg(name="adamw", eps=0.0)
  new, state = step(config, params, grads)
  lr, wd, p = 0.1, 0.5, 2.0
  np.testing.assert_allclose(new["dense"]["kernel"], p - lr * (-1 + wd * p), rtol=1e-6)
  np.testing.assert_allclose(new["dense"]["bias"], p - lr * -1, rtol=1e-6)
  np.testing.assert_allclose(new["head"]["kernel"], p - 10 * lr * (-1 + wd * p), rtol=1e-6)
  np.testing.assert_array_equal(new["embed"]["embedding"], params["embed"]["embedding"])
  # Adam moments (2 per trained value) and nothing for the 3 frozen values.
  trained = sum(x.size for x in jax.tree.leaves(params)) - 3
  moments = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
  assert moments == 2 * trained


def test_no_rules_keep_the_plain_optimizer_state():
  """Without weight decay the default rule changes nothing, and the state
  keeps the structure checkpoints written before the rules have."""
  import optax
  params = toy_params()
  config = cfg(clip_norm=1.0, lr_mults=(), wd_mults=NO_DECAY, frozen=())
  tx, _ = optim.make_optimizer(config, 100, params)
  old = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adam(optim.schedule(config, 100), b1=0.9, b2=0.98, eps=1e-9))
  assert (jax.tree.structure(tx.init(params)) == jax.tree.structure(old.init(params)))


def test_weight_decay_cosine_schedule():
  """DINO's: cosine from weight_decay at step 0 to weight_decay_end at the end."""
  config = cfg(weight_decay=0.04, weight_decay_end=0.4, wd_schedule="cosine")
  wd = optim.weight_decay(config, 100)
  for s in (0, 25, 50, 100):
    want = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * s / 100))
    np.testing.assert_allclose(float(wd(s)), want, rtol=1e-6)


@pytest.mark.parametrize("change, key, words", [
    (dict(lr_mults=(("haed/.*", 10.0),)), "optim.lr_mults", "matches no parameter"),
    (dict(frozen=(".*",)), "optim.frozen", "freezes every parameter"),
    (dict(frozen=("dense/kernel", "nothing")), "optim.frozen", "'nothing' matches no"),
])
def test_bad_rules_are_one_line_errors(change, key, words):
  config = rules_cfg(name="adamw")
  config.update(change)
  with pytest.raises(ConfigError) as e:
    optim.make_optimizer(config, 10, toy_params())
  assert e.value.key == key and words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["constant", "cosine", "linear"])
def test_no_warmup_starts_at_the_peak(name):
  lr = optim.schedule(cfg(schedule=name, warmup_steps=0), 100)
  np.testing.assert_allclose(float(lr(0)), 1.0, rtol=1e-6)
