"""Regex rules over parameter names, the one way a config addresses some
parameters: sharding (`config.param_sharding`), learning-rate and
weight-decay multipliers and freezing (`config.optim.*`).

A parameter's name is its path in the tree joined by "/", e.g.
`decoder/layer_0/attention/query/kernel`. A rule's regex must match the whole
name (`re.fullmatch`); the first matching rule wins.
"""
import re

import jax


def path_name(path):
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def names(tree):
  return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def first_match(patterns, name):
  """Index of the first regex in `patterns` matching all of `name`, else None."""
  for i, pattern in enumerate(patterns):
    if re.fullmatch(pattern, name):
      return i
  return None


def unmatched(patterns, tree):
  """The regexes that match no parameter name of `tree` (likely typos)."""
  all_names = names(tree)
  return [p for p in patterns if not any(re.fullmatch(p, n) for n in all_names)]
