"""Evaluation on every device, over padded and masked global batches.

An evaluator is a per-row function `per_row(params, batch) -> {name: [B, ...]}`
that is jitted over the mesh with the parameters' own shardings (replicated
or FSDP) and the batch split on `data`. Every process feeds its share of
each global batch, so all hosts run the same number of steps; the last
batch is padded with rows of `weight` 0, which never count:

  sums(per_row, params, batches)   sums over the real rows, kept on device
                                   until the end (losses, accuracies)
  rows(per_row, params, batches)   every real row's outputs, gathered from
                                   all hosts into numpy on each (features for
                                   k-NN, probes, zero-shot and retrieval;
                                   translations for BLEU)

`per_row` is a static argument of the jitted step: pass the same function
object (a method or a module-level function) each time, so it compiles once.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from attnlab import sharding as sharding_lib


def round_to_devices(batch_size, mesh):
  """The smallest multiple of the mesh's batch devices >= batch_size."""
  data = sharding_lib.batch_devices(mesh)
  return -(-batch_size // data) * data


def batches(columns, batch_size, mesh):
  """Global batches of `batch_size` rows over every row of `columns`, plus
  a `weight` column (1 for real rows, 0 for the padding of the last
  batch). Each process contributes its rows of each batch.

  columns: {name: [N, ...]} (the same arrays on every process), or a
  random-access source (len() and [i] -> {name: array}, e.g. images
  decoded and preprocessed on access), of which each process reads only
  its own rows."""
  data = sharding_lib.batch_devices(mesh)
  if batch_size % data:
    raise ValueError(f"eval batch {batch_size} is not a multiple of the mesh's {data} "
                     "batch devices")
  local = sharding_lib.local_batch_size(batch_size, mesh)
  first = jax.process_index() * local  # processes own consecutive blocks
  if isinstance(columns, dict):
    columns = {k: np.asarray(v) for k, v in columns.items()}
    n = len(next(iter(columns.values())))
    take = lambda lo, hi: {k: v[lo:hi] for k, v in columns.items()}
  else:
    n = len(columns)

    def take(lo, hi):
      got = [columns[i] for i in range(lo, hi)]
      return {k: np.stack([np.asarray(row[k]) for row in got]) for k in got[0]}
  for start in range(0, n, batch_size):
    lo, hi = min(start + first, n), min(start + first + local, n)
    # A process with no real row in this batch still feeds padding (the
    # shapes of row 0).
    rows = take(lo, hi) if hi > lo else {k: v[:0] for k, v in take(0, 1).items()}
    pad = local - (hi - lo)
    rows = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
            for k, v in rows.items()}
    rows["weight"] = (np.arange(local) < hi - lo).astype(np.float32)
    yield sharding_lib.global_batch(rows, mesh)


def _row_weight(weight, value):
  return weight.reshape(weight.shape + (1,) * (value.ndim - 1)).astype(value.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _sum_step(per_row, params, batch):
  values = per_row(params, batch)
  w = batch["weight"]
  out = {k: jnp.sum(v * _row_weight(w, v)) for k, v in values.items()}
  out["count"] = jnp.sum(w)
  return out


def sums(per_row, params, batches):
  """{name: sum of per_row(...)[name] over the real rows, "count": rows}."""
  total = None
  for batch in batches:
    step = _sum_step(per_row, params, batch)
    total = step if total is None else jax.tree.map(jnp.add, total, step)
  return {k: float(v) for k, v in (total or {"count": 0.0}).items()}


@functools.partial(jax.jit, static_argnums=0)
def _row_step(per_row, params, batch):
  return per_row(params, batch), batch["weight"]


def gather(per_row, params, batch):
  """per_row's outputs for the real rows of one global batch, from every
  host, as numpy on each (in the global batch's row order)."""
  values, weight = multihost_utils.process_allgather(
      _row_step(per_row, params, batch), tiled=True)
  keep = np.asarray(weight) > 0
  return jax.tree.map(lambda v: np.asarray(v)[keep], values)


def rows(per_row, params, batches):
  """gather() over every batch, concatenated: {name: [N, ...]}."""
  parts = [gather(per_row, params, batch) for batch in batches]
  if not parts:
    raise ValueError("no rows to evaluate: the split is empty")
  return jax.tree.map(lambda *v: np.concatenate(v), *parts)


def per_device(fn, mesh):
  """fn(params, batch) run on each device's rows of the batch with no
  communication (params gathered whole onto every device, e.g. from FSDP
  shards). For loops whose length depends on the rows, like beam search:
  each device stops when its own rows are done."""
  from jax.sharding import PartitionSpec as P
  axes = sharding_lib.batch_axes(mesh)
  return jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(axes)), out_specs=P(axes),
                       check_vma=False)
