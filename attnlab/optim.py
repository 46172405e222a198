"""Optimizers, schedules and per-parameter rules from `config.optim`.

Per-parameter rules are regex lists over parameter names (attnlab/rules.py;
first match wins), as in big_vision:

  lr_mults  ((regex, m), ...)  learning rate times m (e.g. a new head at 10x)
  wd_mults  ((regex, m), ...)  weight decay times m; the default, as in the
            BERT and ViT recipes, decays no biases and no normalisation scales
  frozen    (regex, ...)       not trained: zero updates and no optimizer state

Weight decay may follow a schedule: `wd_schedule="cosine"` goes from
`weight_decay` to `weight_decay_end` (DINO raises it from 0.04 to 0.4). The
schedules are callables optax evaluates on its own step count; the
optimizer state has no extra hyperparameter copies.
"""
import jax
import jax.numpy as jnp
import optax

from attnlab import rules as rules_lib
from attnlab.config import NO_DECAY, ConfigError


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
  # (optax's warm-up schedules start at 0 even when warmup_steps is 0.)
  if optim.schedule == "cosine":
    return (optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps)
            if warmup else optax.cosine_decay_schedule(lr, total_steps))
  if optim.schedule == "constant":
    return (optax.warmup_constant_schedule(0.0, lr, warmup)
            if warmup else optax.constant_schedule(lr))
  decay = optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))
  if warmup == 0:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def weight_decay(optim, total_steps):
  """The weight-decay rate: a float, or a schedule of the step."""
  wd, end = optim.weight_decay, optim.get("weight_decay_end", 0.0)
  if optim.get("wd_schedule", "constant") == "constant":
    return wd
  cosine = optax.cosine_decay_schedule(1.0, total_steps)  # 1 -> 0
  return lambda step: end + (wd - end) * cosine(step)


def _scaled(value, m):
  if m == 1.0:
    return value
  return (lambda step: m * value(step)) if callable(value) else m * value


def _group(optim, lr, wd, lr_mult, wd_mult):
  """The optimizer of one group of parameters (equal multipliers)."""
  lr, wd = _scaled(lr, lr_mult), _scaled(wd, wd_mult)
  mu_dtype = jnp.dtype(optim.get("mu_dtype", "float32"))
  if optim.name == "adamw":
    return optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                       weight_decay=wd, mu_dtype=mu_dtype)
  if optim.name == "adam":
    opt = optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, mu_dtype=mu_dtype)
  else:
    opt = optax.sgd(lr, momentum=optim.b1 or None, accumulator_dtype=mu_dtype)
  # sgd and adam: weight decay is L2 on the gradient (torch.optim's meaning).
  return opt if wd == 0.0 else optax.chain(optax.add_decayed_weights(wd), opt)


def labels(optim, params):
  """(tree of each parameter's group name, {name: (lr_mult, wd_mult)});
  frozen parameters are in group "frozen"."""
  lr_rules = [tuple(r) for r in optim.get("lr_mults", ())]
  wd_rules = [tuple(r) for r in optim.get("wd_mults", NO_DECAY)]
  lr_patterns, wd_patterns = [p for p, _ in lr_rules], [p for p, _ in wd_rules]
  frozen = list(optim.get("frozen", ()))
  groups = {}

  def one(path, _):
    name = rules_lib.path_name(path)
    if rules_lib.first_match(frozen, name) is not None:
      return "frozen"
    i = rules_lib.first_match(lr_patterns, name)
    j = rules_lib.first_match(wd_patterns, name)
    mults = (1.0 if i is None else float(lr_rules[i][1]),
             1.0 if j is None or optim.weight_decay == 0 else float(wd_rules[j][1]))
    label = f"lr={mults[0]:g},wd={mults[1]:g}"
    groups[label] = mults
    return label
  return jax.tree_util.tree_map_with_path(one, params), groups


def check_rules(optim, params, tree):
  """One-line errors for rules that cannot be what the user meant (`tree`:
  the parameters' group names)."""
  checks = [("optim.lr_mults", [p for p, _ in optim.get("lr_mults", ())]),
            ("optim.frozen", list(optim.get("frozen", ())))]
  if optim.weight_decay > 0:
    checks.append(("optim.wd_mults", [p for p, _ in optim.get("wd_mults", NO_DECAY)]))
  for key, patterns in checks:
    missing = rules_lib.unmatched(patterns, params)
    if missing:
      some = ", ".join(rules_lib.names(params)[:4])
      raise ConfigError(key, f"regex {missing[0]!r} matches no parameter",
                        f"names look like {some}; run with one that matches "
                        "(re.fullmatch on the whole name)")
  if all(label == "frozen" for label in jax.tree.leaves(tree)):
    raise ConfigError("optim.frozen", "freezes every parameter: nothing would train",
                      "leave some parameters out of the frozen regexes")


def make_optimizer(optim, total_steps, params):
  """Global-norm clipping, then the named optimizer on the schedule, per
  group of parameters with equal rules (`params`: the tree or its shapes).

  Returns (tx, schedules): schedules are {"lr": fn, "wd": fn} of the step,
  the base values the multipliers scale, logged each step.
  """
  tree, groups = labels(optim, params)
  check_rules(optim, params, tree)
  lr, wd = schedule(optim, total_steps), weight_decay(optim, total_steps)
  txs = {g: _group(optim, lr, wd, *mults) for g, mults in groups.items()}
  if any(label == "frozen" for label in jax.tree.leaves(tree)):
    txs["frozen"] = optax.set_to_zero()
  # One group (no rule applies): the plain optimizer, whose state has the
  # same structure as before rules existed, so older checkpoints resume.
  opt = next(iter(txs.values())) if len(txs) == 1 else optax.partition(txs, tree)
  chain = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm else []
  schedules = {"lr": lr}
  if callable(wd):
    schedules["wd"] = wd
  return optax.chain(*chain, opt), schedules
