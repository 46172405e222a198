"""The precision policy: `model.dtype` is what activations and matmul
inputs are computed in (bfloat16 for the pod recipes), parameters and the
optimizer state stay float32, Adam's first moment optionally bfloat16
(`optim.mu_dtype`). Checked against the same model in float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import main as main_lib
from attnlab import sharding
from attnlab import train

# Stated tolerances: bfloat16 keeps 8 bits of mantissa (relative rounding
# 2^-9 = 0.2% per value); through a few layers and a softmax the loss moves
# by well under 1%, and the gradient's direction by a few degrees.
LOSS_RTOL = 0.01
GRAD_COSINE = 0.99
GRAD_NORM_RTOL = 0.05


def experiment(spec, *overrides):
  config, _ = main_lib.parse_config(["--config", spec, *overrides])
  return config, main_lib.experiment_module(config).Experiment(config, None, read_data=False)


def batch_for(config, exp, rng):
  shapes = exp.abstract_batch(config.batch_size)
  keys = iter(jax.random.split(rng, len(shapes)))
  if config.experiment == "translate":
    high = config.data.vocab_size
  else:
    high = len(exp.classes)
  return {k: (jax.random.normal(next(keys), s.shape, s.dtype)
              if jnp.issubdtype(s.dtype, jnp.floating)
              else jax.random.randint(next(keys), s.shape, 1, high).astype(s.dtype))
          for k, s in shapes.items()}


@pytest.mark.parametrize("spec", ["configs/vit.py:i1k,variant=Ti/16,runlocal=True",
                                  "configs/wmt.py:ding,runlocal=True"])
def test_bfloat16_compute_keeps_the_loss_and_gradients_of_float32(spec):
  """The same float32 parameters and batch: the loss within 1%, the
  gradient within 0.99 cosine and 5% norm of float32 compute's; the
  parameters themselves are float32 under both."""
  rng = jax.random.PRNGKey(0)
  mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  results = {}
  for dtype in ("float32", "bfloat16"):
    config, exp = experiment(spec, f"--config.model.dtype={dtype}")
    variables = exp.init(rng, config.batch_size)
    params = results["float32"][2] if results else variables["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    state = {"model_state": variables.get("model_state", {}), "carry": variables.get("carry", {}),
             "extra": variables.get("extra", {})}
    batch = batch_for(config, exp, jax.random.PRNGKey(1))
    def loss_and_grad(params, state, batch, rng):
      ctx = train.StepContext(rng, jnp.zeros((), jnp.int32), mesh)
      return jax.value_and_grad(exp.loss, has_aux=True)(params, state, batch, ctx)
    (loss, _), grads = jax.jit(loss_and_grad)(params, state, batch, jax.random.PRNGKey(2))
    results[dtype] = (float(loss), grads, params)
  (l32, g32, _), (l16, g16, _) = results["float32"], results["bfloat16"]
  assert l16 == pytest.approx(l32, rel=LOSS_RTOL), (l16, l32)
  flat = lambda g: np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(g)])
  a, b = flat(g32), flat(g16)
  cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  assert cosine > GRAD_COSINE, cosine
  assert np.linalg.norm(b) == pytest.approx(np.linalg.norm(a), rel=GRAD_NORM_RTOL)
  # ... and a real difference: the two really computed in different dtypes
  # (ViT's loss alone is the same: its head starts at zero).
  assert not np.array_equal(a, b)


def test_bfloat16_first_moment_halves_it_and_keeps_the_rest_float32():
  config, exp = experiment("configs/vit.py:i1k,variant=Ti/16,runlocal=True",
                           "--config.optim.mu_dtype=bfloat16")
  from attnlab import optim
  params = exp.init(jax.random.PRNGKey(0), 8)["params"]
  tx, _ = optim.make_optimizer(config.optim, config.total_steps, params)
  state = jax.eval_shape(tx.init, params)
  dtypes = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    kind = next((str(getattr(p, "name", "")) for p in path
                 if getattr(p, "name", "") in ("mu", "nu")), None)
    if kind and leaf.ndim:
      dtypes.setdefault(kind, set()).add(str(leaf.dtype))
  assert dtypes == {"mu": {"bfloat16"}, "nu": {"float32"}}, dtypes


def test_an_unknown_moment_dtype_is_one_line():
  from helpers import run_cli
  code, out = run_cli("compile", "configs/wmt.py:ding,runlocal=True", "--devices", "1",
                      "--config.optim.mu_dtype=float16")
  assert code == 2 and "optim.mu_dtype" in out and out.strip().count("\n") == 0, out


@pytest.mark.parametrize("spec", ["configs/vit.py:i1k,variant=Ti/16,runlocal=True",
                                  "configs/wmt.py:ding,runlocal=True"])
def test_gathered_parameters_compute_what_the_layers_compute(spec):
  """`gather_params`' copy has its kernels cast to bfloat16 before the
  gather; every Dense and Conv casts them to its bfloat16 compute dtype
  anyway, so the loss and gradients are those of the float32 parameters,
  on 8 devices with the parameters split over them (FSDP rule)."""
  config, exp = experiment(spec, "--config.model.dtype=bfloat16")
  mesh = sharding.make_mesh((("data", 8),))
  variables = exp.init(jax.random.PRNGKey(0), config.batch_size)
  params = variables["params"]
  shardings = sharding.param_shardings(params, mesh, [(".*", ("data",))])
  assert any("data" in tuple(s.spec) for s in jax.tree.leaves(shardings))
  params = jax.device_put(params, shardings)
  state = {k: variables.get(k, {}) for k in train.STATE_KEYS}
  batch = batch_for(config, exp, jax.random.PRNGKey(1))

  def loss_and_grad(params, gather):
    ctx = train.StepContext(jax.random.PRNGKey(2), jnp.zeros((), jnp.int32), mesh)
    if not gather:
      return jax.value_and_grad(exp.loss, has_aux=True)(params, state, batch, ctx)
    gathered = lambda p, *a: exp.loss(sharding.gather_whole(p, mesh, jnp.bfloat16), *a)
    return jax.value_and_grad(gathered, has_aux=True)(params, state, batch, ctx)
  with jax.set_mesh(mesh):
    (l0, _), g0 = jax.jit(loss_and_grad, static_argnums=1)(params, False)
    (l1, _), g1 = jax.jit(loss_and_grad, static_argnums=1)(params, True)
  kernels = [x for p, x in jax.tree_util.tree_leaves_with_path(
      sharding.gather_whole(params, mesh, jnp.bfloat16)) if "kernel" in jax.tree_util.keystr(p)]
  assert kernels and all(k.dtype == jnp.bfloat16 for k in kernels)
  assert float(l1) == pytest.approx(float(l0), rel=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    assert a.dtype == b.dtype == jnp.float32
    # At most a bfloat16 rounding of each gradient (2^-9 relative): the
    # gradient of a bfloat16 copy is bfloat16, where XLA may fold the
    # layer's own cast into its matmul and keep float32 (ViT's head, here:
    # 0.22%; every other leaf is equal).
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(b - a) <= 2 ** -8 * np.linalg.norm(a), a.shape
