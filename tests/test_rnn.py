"""Recurrent layers against naive implementations of their equations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from attnlab.models import rnn_lm
from attnlab.nn import rnn


def _run(model, x, carry):
  params = model.init(jax.random.PRNGKey(0), x, carry)
  return params, model.apply(params, x, carry)


def test_vanilla_rnn_is_tanh_recurrence():
  """h_t = tanh(W_xh x_t + W_hh h_{t-1} + b), written out in numpy."""
  B, T, D, H = 2, 7, 3, 5
  x = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
  model = rnn.StackedRNN("rnn", H, 1)
  carry = rnn.zero_carry("rnn", H, 1, B)
  params, (out, new_carry, _) = _run(model, x, carry)
  p = params["params"]["layer_0"]["cell"]
  w_xh, b, w_hh = (np.asarray(p["i"]["kernel"]), np.asarray(p["i"]["bias"]),
                   np.asarray(p["h"]["kernel"]))
  h = np.zeros((B, H))
  for t in range(T):
    h = np.tanh(np.asarray(x[:, t]) @ w_xh + h @ w_hh + b)
    np.testing.assert_allclose(out[:, t], h, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new_carry[0], h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stack_equals_flax_rnn_layers(cell):
  """Our stack == flax's nn.RNN over the same cells, layer by layer."""
  B, T, D, H = 2, 6, 4, 8
  x = jax.random.normal(jax.random.PRNGKey(2), (B, T, D))
  model = rnn.StackedRNN(cell, H, 2)
  carry = rnn.zero_carry(cell, H, 2, B)
  params, (out, _, _) = _run(model, x, carry)
  y = x
  for i in range(2):
    flax_cell = rnn.CELLS[cell](features=H)
    y = nn.RNN(flax_cell).apply(
        {"params": {"cell": params["params"][f"layer_{i}"]["cell"]}}, y)
  np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_carry_across_windows_equals_one_long_sequence(cell):
  """TBPTT's forward pass: two windows with the carry passed on == one
  window of twice the length."""
  model = rnn_lm.RNNLM(vocab_size=11, cell=cell, hidden=8, num_layers=2, embed=4)
  tokens = jax.random.randint(jax.random.PRNGKey(3), (3, 10), 0, 11)
  carry = model.zero_carry(3)
  params = model.init(jax.random.PRNGKey(0), tokens, carry)
  full, _ = model.apply(params, tokens, carry)
  first, aux = model.apply(params, tokens[:, :4], carry)
  second, _ = model.apply(params, tokens[:, 4:], aux["carry"])
  np.testing.assert_allclose(jnp.concatenate([first, second], 1), full,
                             rtol=1e-5, atol=1e-5)


def test_truncated_bptt_stops_gradient_at_the_window_border():
  from experiments import lm
  import ml_collections
  config = ml_collections.ConfigDict({"data": {"stateful": True}})
  exp = object.__new__(lm.Experiment)  # the objective alone, no data
  exp.config, exp.recurrent = config, True
  exp.model = rnn_lm.RNNLM(vocab_size=7, cell="lstm", hidden=4, num_layers=1,
                           embed=3)
  batch = {"inputs": jnp.ones((2, 5), jnp.int32),
           "targets": jnp.zeros((2, 5), jnp.int32)}
  params = exp.model.init(jax.random.PRNGKey(0), batch["inputs"],
                          exp.model.zero_carry(2))["params"]
  carry = jax.tree.map(lambda x: x + 0.5, exp.model.zero_carry(2))
  from attnlab.train import StepContext
  ctx = StepContext(jax.random.PRNGKey(1), jnp.zeros((), jnp.int32), None)
  state = lambda c: {"model_state": {}, "carry": c, "extra": {}}
  g = jax.grad(lambda c: exp.loss(params, state(c), batch, ctx)[0])(carry)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g))
  g_params = jax.grad(lambda p: exp.loss(p, state(carry), batch, ctx)[0])(params)
  assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g_params))
