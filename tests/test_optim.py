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
  tx, _ = optim.make_optimizer(cfg(name="sgd", b1=0.0, schedule="constant",
                                   warmup_steps=0, clip_norm=1.0), 10)
  params = {"w": jnp.zeros(4)}
  grads = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.6, -0.8, 0, 0], rtol=1e-6)
