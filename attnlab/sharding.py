"""Device mesh, shardings and multi-host start-up.

Data parallelism is `jit` over a `Mesh` whose batch axes split the batch;
parameters are replicated unless a regex rule in `config.param_sharding`
gives them a PartitionSpec (e.g. FSDP: `(".*", ("data",))`). The mesh's
axes are named in `config.mesh`, MaxText's way:
  data   splits the batch; parameters sharded over it are FSDP (ZeRO-3)
  fsdp   also splits the batch: a second batch axis for rules to shard
         parameters over apart from `data` (e.g. FSDP inside a host,
         data parallel across hosts)
  model  splits no batch: rules shard parameters over it (tensor
         parallelism), each of its devices sees the same rows
Any other name is an axis for rules only, like `model`.
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

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
  available = len(devices)
  names = tuple(name for name, _ in mesh_config)
  sizes = [size for _, size in mesh_config]
  fixed = int(np.prod([s for s in sizes if s > 0]))
  sizes = [len(devices) // fixed if s == -1 else s for s in sizes]
  used = int(np.prod(sizes))
  # Keep every process's devices in the mesh: take the first `used` devices in
  # process order, so a mesh smaller than the machine is still well defined.
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))[:used]
  if used < available:  # a sub-mesh (tests): in that order
    return Mesh(np.asarray(devices).reshape(sizes), names)
  auto = (AxisType.Auto,) * len(names)
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if slices > 1:
    # Several TPU slices joined by the data-centre network (DCN): the first
    # axis (the batch's) spans the slices, every other axis stays on one
    # slice's links, where its collectives are fast.
    from jax.experimental import mesh_utils
    if sizes[0] % slices:
      raise ValueError(f"mesh axis {names[0]!r} of size {sizes[0]} cannot span {slices} slices")
    grid = mesh_utils.create_hybrid_device_mesh(
        [sizes[0] // slices] + sizes[1:], [slices] + [1] * (len(sizes) - 1), devices)
    return Mesh(grid, names, axis_types=auto)
  # All devices: jax.make_mesh orders a TPU slice's chips by their links, so
  # that each mesh axis runs along the torus (elsewhere, the order above).
  # Auto axes: shardings are chosen by XLA, not typed into every array.
  return jax.make_mesh(tuple(sizes), names, axis_types=auto,
                       devices=devices)


BATCH_AXES = ("data", "fsdp")


def batch_axes(mesh):
  """The mesh's axes that split the batch, as one PartitionSpec entry (and
  an axis name for collectives under shard_map)."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return axes[0] if len(axes) == 1 else axes


def batch_devices(mesh):
  """How many ways the batch is split (the product of the batch axes)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))


def batch_sharding(mesh):
  """Leading (batch) axis split over the batch axes, the rest replicated."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh):
  return NamedSharding(mesh, P())


def param_shardings(params_shape, mesh, rules):
  """Shardings for a param tree from `(regex, spec)` rules; first match wins.

  A dimension whose size the mesh axis does not divide stays replicated, so
  one FSDP rule `(".*", ("data",))` works for every parameter. A rule is
  written for one layer's parameter: under a scanned stack (`*_scan`, the
  layers stacked on a leading axis) its spec applies from the second
  dimension on, so the same rule shards a layer alike scanned or not (the
  layer axis itself is never split: the scan walks it).
  """
  patterns = [pattern for pattern, _ in rules]

  def one(path, leaf):
    name = rules_lib.path_name(path)
    i = rules_lib.first_match(patterns, name)
    if i is None:
      return NamedSharding(mesh, P())
    scanned = any(part.endswith("_scan") for part in name.split("/"))
    spec = ((None,) if scanned else ()) + tuple(rules[i][1])
    spec = spec[:leaf.ndim]
    spec = tuple(
        axis if axis is None or leaf.shape[d] % _axis_size(mesh, axis) == 0
        else None for d, axis in enumerate(spec))
    return NamedSharding(mesh, P(*spec))
  return jax.tree_util.tree_map_with_path(one, params_shape)


def gather_whole(params, mesh, dtype):
  """Every parameter whole on every device, each kernel cast to the compute
  `dtype` before it is gathered (Dense and Conv cast their kernels to it
  anyway, so the step computes the same numbers with half the bytes on the
  links in bfloat16). The rest (biases, norms' scales, embedding tables the
  models look up in float32) is gathered as it is. Differentiated through,
  the gradients come back in the parameters' dtype, split like them."""
  rep = replicated(mesh)

  def one(path, p):
    if rules_lib.path_name(path).endswith("kernel") and jnp.issubdtype(p.dtype, jnp.floating):
      p = p.astype(dtype)
    return jax.lax.with_sharding_constraint(p, rep)
  return jax.tree_util.tree_map_with_path(one, params)


def check_rules(rules, variables, mesh):
  """One-line errors, before anything compiles, for `config.param_sharding`
  rules that cannot be what the user meant: a regex that matches no
  parameter name, a PartitionSpec naming an axis the mesh lacks."""
  from attnlab.config import ConfigError
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2
            and isinstance(rule[1], (tuple, list))):
      raise ConfigError("param_sharding", f"{rule!r} is not a (regex, PartitionSpec tuple) "
                        "pair", "e.g. --config.param_sharding=\"(('.*kernel', ('data',)),)\"")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise ConfigError("param_sharding", f"bad regex {rule[0]!r}: {e}",
                        "fix the regular expression") from None
    for axis in rule[1]:
      for name in axis if isinstance(axis, (tuple, list)) else (axis,):
        if name is not None and name not in mesh.axis_names:
          raise ConfigError("param_sharding", f"rule {rule[0]!r} names mesh axis {name!r}, "
                            f"but the mesh has {mesh.axis_names}",
                            "use one of those axes, or add it to --config.mesh")
  # each of params, model_state and extra is matched by its own names
  missing = [p for p in (rule[0] for rule in rules)
             if all(p in rules_lib.unmatched([p], tree) for tree in variables.values())]
  if missing:
    some = ", ".join(rules_lib.names(variables["params"])[:3])
    raise ConfigError("param_sharding", f"regex {missing[0]!r} matches no parameter",
                      f"names look like {some} (re.fullmatch on the whole name)")


def optimizer_shardings(tx, opt_state_shape, params_shape, params_shardings, replicated_):
  """The optimizer state's shardings, each copy of the parameters in it (Adam's
  mu and nu, ...) sharded exactly like the parameters; the rest (counts,
  scalars) replicated. Rules are written once, for the parameters' names:
  matched against the state's own paths (`1/0/mu/encoder/...`) they would
  miss its moments or hit its counters."""
  import optax

  masked = lambda x: isinstance(x, optax.MaskedNode)

  def like_param(leaf, param, sharding):
    if masked(leaf):  # a parameter this transform leaves out (weight decay's mask)
      return leaf
    # a factored statistic (Adafactor's row and column) is no copy of its param
    return sharding if getattr(leaf, "shape", None) == param.shape else replicated_
  return optax.tree_map_params(tx, like_param, opt_state_shape, params_shape,
                               params_shardings, is_leaf=masked,
                               transform_non_params=lambda _: replicated_)


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
  """Rows this process feeds: the distinct rows its devices hold (a model
  axis' devices hold the same rows)."""
  rows = set()
  for device, index in batch_sharding(mesh).devices_indices_map(
      (global_batch_size,)).items():
    if device.process_index == jax.process_index():
      rows.add((index[0].start, index[0].stop))
  return sum((stop or global_batch_size) - (start or 0) for start, stop in rows)

