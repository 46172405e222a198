"""attnlab's train step against a peer's, both compiled by the TPU compiler
for the same slice at the same global batch: the compiler's estimated step
time (summed per-operation cycle estimates, attnlab/tpu.py), HBM per chip,
FLOPs per chip, and each program's top costs.

  python -m benchmarks.tpu_peers vit BIG_VISION [--tpu v5e-16] [--batch 256] [--variant B/16]
  python -m benchmarks.tpu_peers wmt FLAX/examples/wmt [--tpu v5e-16] [--batch 128] [--variant big]
      [--config.KEY=VALUE ...]   overrides of attnlab's side
      [--top N] [--hlo DIR]      N top costs of each; both compiled programs into DIR

vit: configs/vit.py:i1k against big_vision's configs/vit_i1k.py step
(benchmarks/peers.py: its model, optimizer, sigmoid loss and norms). wmt:
configs/wmt.py (base or big) against the flax examples' train_step at the
same dims, under shard_map as its pmap runs it (each chip its rows, a pmean
of the gradients). Peers are checkouts fetched at run time, never
committed. Both sides keep float32 parameters. Each side runs its own
recipe: attnlab's ViT i1k splits its parameters and optimizer state over
the chips and gathers them once per step (`--config.param_sharding="()"
--config.gather_params=False`: data parallel, as the peers are); compute
dtypes are each side's TPU default: attnlab's pod recipes bfloat16 (ViT
i1k also keeps Adam's first moment in bfloat16, as big_vision does); big_vision's ViT
float32 (its matmuls run as bfloat16 passes at default precision); the flax
example the dtype of attnlab's config, bfloat16 by default (its own TPU
default, `use_mixed_precision`). --config.model.dtype=float32 with the two
data-parallel overrides above compares like with like for the ViT.
"""
import argparse
import os
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def start_tpu_compiler(slice_name):
  from attnlab import tpu
  os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX starts; the TPU is abstract
  import jax
  jax.config.update("jax_enable_compilation_cache", False)
  s = tpu.parse_slice(slice_name)
  return s, tpu.abstract_chips(s)


def compile_ours(spec, overrides, devices):
  import jax
  from attnlab import main as main_lib
  from attnlab import train
  config, _ = main_lib.parse_config(["--config", spec, *overrides])
  module = main_lib.validate(config, jax, len(devices))
  with train.abstract_step(module, config, devices) as (trainer, exp, step, args):
    t0 = time.perf_counter()
    with jax.set_mesh(trainer.mesh):
      compiled = step.lower(*args).compile()
  return compiled, time.perf_counter() - t0, train.param_count(args[0]["params"])


def compile_peer(fn, state_shapes, batch_shapes, extra, mesh):
  """The peer's step jitted over `mesh`: its state replicated, its batch
  split over the mesh's first axis, as its data-parallel trainer does."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  rep = NamedSharding(mesh, P())
  shard = NamedSharding(mesh, P(mesh.axis_names[0]))
  with_sharding = lambda tree, s: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree)
  args = (with_sharding(state_shapes, rep), with_sharding(batch_shapes, shard),
          *[with_sharding(e, rep) for e in extra])
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = jax.jit(fn, donate_argnums=(0,)).lower(*args).compile()
  return compiled, time.perf_counter() - t0


def big_vision_side(bv_dir, variant, batch, mesh):
  import jax
  import jax.numpy as jnp
  from benchmarks import peers
  init, update_fn = peers.big_vision_vit_step(bv_dir, variant)
  images = jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.float32)
  state = jax.eval_shape(init, jax.random.PRNGKey(0), images)
  batch_shapes = {"image": images, "labels": jax.ShapeDtypeStruct((batch, 1000), jnp.float32)}
  rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  compiled, secs = compile_peer(update_fn, state, batch_shapes, [rng], mesh)
  return compiled, secs, sum(x.size for x in jax.tree.leaves(state["params"]))


def flax_wmt_side(flax_dir, config, batch, mesh):
  """flax examples/wmt's train_step at attnlab's dims (config.model)
  (benchmarks/peers.py), its batch of `inputs`/`targets` of
  config.data.max_len tokens."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P
  from benchmarks import peers
  m, length = config.model, config.data.max_len
  init, step = peers.flax_wmt_step(flax_dir, config.data.vocab_size, m.d_model, m.num_heads,
                                   m.d_ff, m.enc_layers, m.dropout, m.attention_dropout,
                                   m.dtype, length)
  state = jax.eval_shape(init, jax.random.PRNGKey(0))
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  axis = mesh.axis_names[0]

  def per_chip(state_, batch_, rng_):  # its pmap, as shard_map: "batch" = the mesh axis
    return step(state_, batch_, dropout_rng=rng_)
  sharded = jax.shard_map(per_chip, mesh=mesh, in_specs=(P(), P(axis), P()),
                          out_specs=(P(), P()), check_vma=False)
  rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  compiled, secs = compile_peer(sharded, state, {"inputs": tokens, "targets": tokens},
                                [rng], mesh)
  return compiled, secs, sum(x.size for x in jax.tree.leaves(state.params))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("what", choices=["vit", "wmt"])
  parser.add_argument("peer_dir")
  parser.add_argument("--tpu", default="v5e-16")
  parser.add_argument("--batch", type=int, default=0, help="global batch (default: "
                      "16 per chip for vit, 8 rows of 64 tokens per chip for wmt)")
  parser.add_argument("--variant", default="")
  parser.add_argument("--top", type=int, default=12)
  parser.add_argument("--hlo", default="", help="a folder: write both compiled programs there")
  args, overrides = parser.parse_known_args()
  print(f"$ python -m benchmarks.tpu_peers {' '.join(sys.argv[1:])}", flush=True)
  s, devices = start_tpu_compiler(args.tpu)
  import jax
  from attnlab import main as main_lib
  from attnlab import tpu
  # Auto axes, as attnlab's mesh: the peers' code does not type shardings.
  mesh = jax.make_mesh((len(devices),), ("batch",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))
  if args.what == "vit":
    variant = args.variant or "B/16"
    batch = args.batch or 16 * s.chips
    spec = f"configs/vit.py:i1k,variant={variant}"
    ours = compile_ours(spec, [f"--config.batch_size={batch}", *overrides], devices)
    theirs = big_vision_side(args.peer_dir, variant, batch, mesh)
    peer, unit = "big_vision", "images"
  else:
    variant = args.variant or "big"
    batch = args.batch or 8 * s.chips
    spec = f"configs/wmt.py:{variant}"
    # Unpacked rows of max_len tokens, as the peer's batch.
    more = [f"--config.batch_size={batch}", "--config.data.pack=False", *overrides]
    ours = compile_ours(spec, more, devices)
    config, _ = main_lib.parse_config(["--config", spec, *more])
    theirs = flax_wmt_side(args.peer_dir, config, batch, mesh)
    peer, unit = "flax examples/wmt", "rows"
  print(f"TPU {s.name} ({s.topology_name}), global batch {batch} ({batch // s.chips} per chip), "
        f"{variant}; the TPU compiler's estimates, not measurements")
  print(f"{'':>20}{'params':>13}{'compile s':>10}{'step ms':>9}{'compute':>9}{'comm':>7}"
        f"{'ops':>6}{'TFLOP/chip':>11}{'args GiB':>9}{'temp GiB':>9}{unit + '/s':>12}")
  results = {}
  for name, (compiled, secs, params) in (("attnlab", ours), (peer, theirs)):
    est = tpu.estimate(compiled.as_text(), s)
    if args.hlo:
      os.makedirs(args.hlo, exist_ok=True)
      with open(os.path.join(args.hlo, name.replace(" ", "_").replace("/", "_") + ".hlo"), "w") as f:
        f.write(compiled.as_text())
    mem = compiled.memory_analysis()
    flops = compiled.cost_analysis()
    flops = (flops[0] if isinstance(flops, (list, tuple)) else flops).get("flops", 0.0)
    results[name] = est
    print(f"{name:>20}{params:>13,}{secs:>10.0f}{1e3 * est.step_s:>9.2f}"
          f"{1e3 * est.compute_s:>9.2f}{1e3 * est.comm_s:>7.2f}{len(est.ops):>6}"
          f"{flops / 1e12:>11.3f}{mem.argument_size_in_bytes / 2 ** 30:>9.3f}"
          f"{mem.temp_size_in_bytes / 2 ** 30:>9.3f}{batch / est.step_s:>12,.0f}")
  ratio = results["attnlab"].step_s / results[peer].step_s
  print(f"attnlab / {peer} estimated step time: {ratio:.3f}x "
        f"({1 / ratio:.2f}x {'faster' if ratio < 1 else 'the speed'})")
  for name, est in results.items():
    print(f"\ntop costs, {name}:")
    for line in tpu.top_costs(est, s.chip, args.top):
      print("  " + line)


if __name__ == "__main__":
  main()
