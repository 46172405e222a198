"""What a train step costs: its FLOPs, the peak they are measured against
(MFU), and the step compiled ahead of time for a number of devices or a TPU
slice (`./launch.sh compile`), with what the compiler says of its memory and
time. The trainer reports its step with the same counts.
"""
import sys
import time

import jax
import jax.numpy as jnp

from attnlab import tpu


def step_flops(compiled):
  """FLOPs of one device's part of a compiled step, from XLA's cost
  analysis (0 if unknown)."""
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost.get("flops", 0.0))
  except Exception:  # some backends do not implement it
    return 0.0


def flops_per_step(exp, config, compiled, devices):
  """(FLOPs of one whole step, how they were counted): the experiment's
  analytic count where it has one, else XLA's cost analysis of the compiled
  step, which is one device's partitioned program (times `devices`) and
  counts a scanned stack's loop body once."""
  analytic = exp.flops_per_step(config.batch_size)
  if analytic:
    return analytic, "analytic"
  how = "XLA cost analysis"
  if config.get("model", {}).get("scan"):
    how += (", which counts a scanned stack's loop body once: too low (compile with "
            "--config.model.scan=False to count every layer)")
  return step_flops(compiled) * devices, how


# Published dense peak FLOP/s of one chip: (bfloat16, float32). At default
# precision XLA runs float32 matmuls as bfloat16 passes on TPUs and as TF32
# on NVIDIA GPUs since Ampere, so the float32 column is that rate. Matched
# against `device_kind` by substring, longest first.
PUBLISHED_PEAK = {
    # TPUs: attnlab/tpu.py's table of chips (device kinds "TPU v4", "TPU v5
    # lite" = v5e, "TPU v5" = v5p, "TPU v6 lite" = v6e)
    **{chip.device_kind: (chip.peak_bf16, chip.peak_bf16) for chip in tpu.CHIPS.values()},
    "A100": (312e12, 156e12),
    "H100": (989e12, 495e12),  # SXM
    "H100 PCIe": (756e12, 378e12),
    "H200": (989e12, 495e12),
}


def peak_flops(config, device=None):
  """(peak FLOP/s of one device, where it comes from) for MFU: the config's
  `peak_flops`, else the published peak of the device in the model's dtype,
  else (0, ...): the CPU, whose peak is measured in-process."""
  if config.peak_flops:
    return config.peak_flops, "config.peak_flops"
  device = device or jax.devices()[0]
  dtype = config.get("model", {}).get("dtype", "float32")
  column = 0 if dtype in ("bfloat16", "float16") else 1
  for name in sorted(PUBLISHED_PEAK, key=len, reverse=True):
    if name in device.device_kind:
      return PUBLISHED_PEAK[name][column], f"published {name} peak in {['bfloat16', 'float32'][column]}"
  return 0.0, "best of 2 measured matmuls"


_PEAK = {}


def measured_peak_flops(n=1024, dtype=jnp.float32):
  """FLOP/s of one device on a large matmul: the denominator of MFU when
  `config.peak_flops` is 0 (no published peak for a laptop CPU). Measured
  at every call; the best of all calls in this process is returned, since
  load from other work only ever makes a measurement low."""
  x = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(5):
    f(x).block_until_ready()
  _PEAK[dtype] = max(_PEAK.get(dtype, 0.0), 5 * 2 * n ** 3 / (time.perf_counter() - t0))
  return _PEAK[dtype]


def compile_step(trainer, exp, step, args, config, tpu_slice=None):
  """Lowers and compiles a trainer's step on abstract arguments
  (train.abstract_step) for its mesh (CPU devices, or a TPU slice's abstract
  chips) and prints what a user booking that hardware needs to know. On a
  TPU slice, returns whether it fits: {"fits": bool, "verdict": words}."""
  on_tpu = tpu_slice is not None
  count = trainer.mesh.devices.size
  where = f"TPU {tpu_slice.name} ({tpu_slice.topology_name})" if on_tpu else f"{count} CPU devices"
  print(f"compiling the train step for {where}...", file=sys.stderr, flush=True)
  start = time.perf_counter()
  try:
    with jax.set_mesh(trainer.mesh):
      compiled = step.lower(*args).compile()
  except jax.errors.JaxRuntimeError as e:
    if not (on_tpu and "RESOURCE_EXHAUSTED" in str(e)):
      raise
    # The TPU compiler refuses a program larger than the chip's HBM.
    words = tpu.out_of_memory(str(e))
    print(f"{tpu_slice.name}: {words} (the TPU compiler's own check; compiled in "
          f"{time.perf_counter() - start:.1f} s)")
    return dict(fits=False, verdict=words)
  compile_s = time.perf_counter() - start
  abstract = args[0]
  mem = compiled.memory_analysis()
  gib = lambda b: b / 2 ** 30
  flops, how = flops_per_step(exp, config, compiled, count)
  params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
  unit = "chip" if on_tpu else "device"
  if on_tpu:
    chip = tpu_slice.chip
    print(f"TPU {tpu_slice.name}: {tpu_slice.chips} x {chip.device_kind} chips "
          f"({tpu_slice.topology_name}{f' x {tpu_slice.slices} slices' if tpu_slice.slices > 1 else ''}"
          f"; {chip.hbm_gib:g} GiB HBM, {chip.peak_bf16 / 1e12:g} TFLOP/s bf16 per chip)")
  print(f"{params:,} params; mesh {dict(trainer.mesh.shape)}; global batch "
        f"{config.batch_size} (accumulation {config.grad_accum}); model dtype "
        f"{config.get('model', {}).get('dtype', 'float32')}")
  print(f"per {unit}: arguments {gib(mem.argument_size_in_bytes):.3f} GiB (state + "
        f"batch), temporaries {gib(mem.temp_size_in_bytes):.3f} GiB, outputs "
        f"{gib(mem.output_size_in_bytes):.3f} GiB (aliased with the donated state)")
  print(f"{flops / 1e12:.4g} TFLOP per step in all, {flops / count / 1e12:.4g} per {unit}"
        f" ({how}); lowered and compiled in {compile_s:.1f} s")
  return tpu_report(compiled, tpu_slice, exp, config, flops, mem) if on_tpu else {}


def tpu_report(compiled, tpu_slice, exp, config, flops, mem):
  """The verdict against the chip's HBM and the compiler's step-time
  estimate, with the roofline beside it."""
  chip = tpu_slice.chip
  fits, words = tpu.verdict(tpu.memory_total(mem), chip)
  print(f"HBM per chip: {words}")
  est = tpu.estimate(compiled.as_text(), tpu_slice)
  per_chip = flops / tpu_slice.chips
  items, item_name = exp.items_per_step(config.batch_size), exp.item_name
  mfu = per_chip / est.step_s / chip.peak_bf16 if est.step_s else 0.0
  print(f"estimated step (the TPU compiler's per-operation cycle estimates at "
        f"{chip.clock_ghz:g} GHz, {len(est.ops)} operations, not a measurement): "
        f"{1e3 * est.step_s:.2f} ms = {1e3 * est.compute_s:.2f} compute + "
        f"{1e3 * est.comm_s:.2f} collectives (at {chip.allreduce_gbs:g} GB/s per chip, "
        f"none overlapped)")
  print(f"  -> {items / est.step_s:,.0f} {item_name}/s, MFU {100 * mfu:.1f}% of "
        f"{chip.peak_bf16 / 1e12:g} TFLOP/s per chip" if est.step_s else "  (no estimate)")
  # The least HBM traffic a step can have: its inputs (state, batch) read
  # once and its outputs written once. (XLA's "bytes accessed" counts every
  # fusion's operands and overshoots the compiler's own estimate.)
  least_bytes = mem.argument_size_in_bytes + mem.output_size_in_bytes
  roof = max(per_chip / chip.peak_bf16, least_bytes / (chip.hbm_gbs * 1e9))
  print(f"roofline bound: {1e3 * roof:.2f} ms (FLOPs at the bf16 peak: "
        f"{1e3 * per_chip / chip.peak_bf16:.2f} ms; the state and batch read once and the "
        f"new state written once, {least_bytes / 2 ** 30:.2f} GiB at {chip.hbm_gbs:g} GB/s: "
        f"{1e3 * least_bytes / chip.hbm_gbs / 1e9:.2f} ms)")
  if est.unknown_loops:
    print(f"note: {len(est.unknown_loops)} loop(s) without a countable trip count are counted "
          f"once: {', '.join(est.unknown_loops[:3])}")
  if "tpu_custom_call" in est.custom_calls:
    print("note: this step runs Pallas kernels (tpu_custom_call); the compiler gives them "
          "no cycle estimate and no FLOPs, so their time is not in the estimate")
  print("top costs (compiler's estimate, by jax op name):")
  for line in tpu.top_costs(est, chip):
    print("  " + line)
  print(f"{tpu_slice.name}: {words}")
  return dict(fits=fits, verdict=words)
