"""Linear probe: multinomial logistic regression on frozen features, fitted
full-batch with L-BFGS (optax.lbfgs), its L2 penalty chosen on validation
(as CLIP's linear probes are fitted; the test split is scored once, by the
caller, with the chosen classifier).

The features are split over the mesh's `data` devices (padded rows weigh
0), so the loss and its gradient are sums over every device.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab import sharding as sharding_lib

L2_GRID = tuple(10.0 ** e for e in range(-6, 1))


def objective(params, x, y, weight, l2):
  """Mean cross-entropy of the real rows + l2 / 2 |W|^2 (bias not penalised)."""
  nll = optax.softmax_cross_entropy_with_integer_labels(predict(params, x), y)
  return jnp.sum(nll * weight) / jnp.sum(weight) + 0.5 * l2 * jnp.sum(params["w"] ** 2)


def predict(params, x):
  return x @ params["w"] + params["b"]


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit(x, y, weight, l2, *, num_classes, steps):
  value = functools.partial(objective, x=x, y=y, weight=weight, l2=l2)
  params = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype),
            "b": jnp.zeros((num_classes,), x.dtype)}
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(value)

  def step(_, carry):
    params, state = carry
    v, g = value_and_grad(params, state=state)
    updates, state = solver.update(g, state, params, value=v, grad=g, value_fn=value)
    return optax.apply_updates(params, updates), state
  params, _ = jax.lax.fori_loop(0, steps, step, (params, solver.init(params)))
  return params


def fit(features, labels, num_classes, l2, mesh, steps=300):
  """The probe {"w": [D, C], "b": [C]} minimising `objective`."""
  x, y = np.asarray(features, np.float32), np.asarray(labels, np.int32)
  data = sharding_lib.batch_devices(mesh)
  pad = -len(x) % data
  weight = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
  x = np.concatenate([x, np.zeros((pad, x.shape[1]), np.float32)])
  y = np.concatenate([y, np.zeros(pad, np.int32)])
  x, y, weight = jax.device_put((x, y, weight), sharding_lib.batch_sharding(mesh))
  return _fit(x, y, weight, jnp.float32(l2), num_classes=num_classes, steps=steps)


def accuracy(params, features, labels):
  scores = np.asarray(predict(jax.device_get(params), np.asarray(features, np.float32)))
  return float((scores.argmax(-1) == np.asarray(labels)).mean())


def select(train, validation, num_classes, mesh, l2_grid=L2_GRID, steps=300):
  """Fits one probe per L2 penalty on `train` ((features, labels)) and keeps
  the one most accurate on `validation`. Returns (probe, l2, {l2: accuracy})."""
  scores, probes = {}, {}
  for l2 in l2_grid:
    probes[l2] = fit(*train, num_classes, l2, mesh, steps)
    scores[l2] = accuracy(probes[l2], *validation)
  best = max(l2_grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger penalty
  return probes[best], best, scores
