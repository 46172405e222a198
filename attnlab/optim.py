"""Optimizers and learning-rate schedules from `config.optim`."""
import jax.numpy as jnp
import optax


def schedule(optim, total_steps):
  """Learning rate as a function of the (0-based) step.

  constant / cosine / linear: linear warm-up over `warmup_steps`, then the
  named decay to 0 at `total_steps`.
  rsqrt: Vaswani et al. (2017) eq. 3, lr * min(s^-0.5, s * warmup^-1.5)
  with s = step + 1, where `lr` plays the role of d_model^-0.5.
  """
  lr, warmup = optim.lr, optim.warmup_steps
  if optim.schedule == "rsqrt":
    def rsqrt(step):
      s = step + 1.0
      return lr * jnp.minimum(s ** -0.5, s * max(warmup, 1) ** -1.5)
    return rsqrt
  decay_steps = max(total_steps - warmup, 1)
  decay = {
      "constant": optax.constant_schedule(lr),
      "cosine": optax.cosine_decay_schedule(lr, decay_steps),
      "linear": optax.linear_schedule(lr, 0.0, decay_steps),
  }[optim.schedule]
  if warmup == 0:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(optim, total_steps):
  """Global-norm clipping, then the named optimizer on the schedule."""
  lr = schedule(optim, total_steps)
  if optim.name == "sgd":
    opt = optax.sgd(lr, momentum=optim.b1 or None)
  elif optim.name == "adam":
    opt = optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  else:
    opt = optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay)
  chain = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm else []
  return optax.chain(*chain, opt), lr
