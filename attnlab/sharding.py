"""Device mesh, shardings and multi-host start-up.

Data parallelism is `jit` over a `Mesh` whose `data` axis splits the batch;
parameters are replicated unless a regex rule in `config.param_sharding`
gives them a PartitionSpec (e.g. FSDP: `(".*", ("data",))`).
"""
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from attnlab import rules as rules_lib


def initialize_distributed():
  """Starts multi-host JAX when the environment asks for it.

  On TPU pods `jax.distributed.initialize()` finds its peers itself
  (ATTNLAB_DISTRIBUTED=1 is set by `launch.sh tpu`). Elsewhere set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; on CPU the
  collectives then go through gloo.
  """
  coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if coordinator:
    if jax.config.jax_platforms in (None, "", "cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif os.environ.get("ATTNLAB_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def make_mesh(mesh_config, devices=None):
  """Mesh from `((axis, size), ...)`; one size may be -1 for "the rest"."""
  devices = list(devices if devices is not None else jax.devices())
  names = tuple(name for name, _ in mesh_config)
  sizes = [size for _, size in mesh_config]
  fixed = int(np.prod([s for s in sizes if s > 0]))
  sizes = [len(devices) // fixed if s == -1 else s for s in sizes]
  used = int(np.prod(sizes))
  # Keep every process's devices in the mesh: take the first `used` devices in
  # process order, so a mesh smaller than the machine is still well defined.
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))[:used]
  return Mesh(np.asarray(devices).reshape(sizes), names)


def batch_sharding(mesh):
  """Leading (batch) axis split over `data`, the rest replicated."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh):
  return NamedSharding(mesh, P())


def param_shardings(params_shape, mesh, rules):
  """Shardings for a param tree from `(regex, spec)` rules; first match wins.

  A dimension whose size the mesh axis does not divide stays replicated, so
  one FSDP rule `(".*", ("data",))` works for every parameter.
  """
  patterns = [pattern for pattern, _ in rules]

  def one(path, leaf):
    i = rules_lib.first_match(patterns, rules_lib.path_name(path))
    if i is None:
      return NamedSharding(mesh, P())
    spec = tuple(rules[i][1])[:leaf.ndim]
    spec = tuple(
        axis if axis is None or leaf.shape[d] % _axis_size(mesh, axis) == 0
        else None for d, axis in enumerate(spec))
    return NamedSharding(mesh, P(*spec))
  return jax.tree_util.tree_map_with_path(one, params_shape)


def _axis_size(mesh, axis):
  axes = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def global_batch(local_batch, mesh):
  """Builds the global batch from this process's rows (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def local_batch_size(global_batch_size, mesh):
  """Rows this process feeds: its share of the mesh's `data` devices."""
  local = sum(1 for d in mesh.devices.flat
              if d.process_index == jax.process_index())
  return global_batch_size * local // mesh.devices.size

