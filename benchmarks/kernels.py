"""Kernels: attention implementations' memory and time, local self-attention's
temporaries, DINO's wide head layouts, XLA:CPU's matmul against PyTorch's.
"""
import os
from benchmarks.timing import interleaved, ratio_summary


def attention(ns=(1024, 2048, 4096, 8192, 16384), heads=8, head_dim=64,
              budget_gib=16.0, rounds=3):
  """Peak memory is XLA's buffer assignment for the compiled program
  (arguments + outputs + temporaries), so a program too big to run here is
  still measured; it is timed only when it fits in `budget_gib`, naive and
  chunked in alternating calls (`rounds` each), reported as medians."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attnlab.nn import kernels

  def loss(impl):
    def f(q, k, v):
      out = kernels.dot_product_attention(q, k, v, kernels.Mask(causal=True),
                                      implementation=impl, q_chunk=512,
                                      kv_chunk=512)
      return jnp.sum(out ** 2)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

  print(f"causal self-attention, batch 1, {heads} heads x {head_dim}, f32, "
        f"forward + backward; seconds: median of {rounds} alternating calls")
  print(f"{'n':>6}{'naive GiB':>10}{'chunked GiB':>12}{'growth at 2n':>13}"
        f"{'naive s':>9}{'chunked s':>10}{'naive/chunked':>14}{'rounds':>12}")
  prev = None
  for n in ns:
    shape = jax.ShapeDtypeStruct((1, n, heads, head_dim), jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, n, heads, head_dim))
    peaks, calls = {}, {}
    for impl in ("naive", "chunked"):
      compiled = loss(impl).lower(shape, shape, shape).compile()
      m = compiled.memory_analysis()
      peaks[impl] = (m.argument_size_in_bytes + m.output_size_in_bytes
                     + m.temp_size_in_bytes) / 2 ** 30
      if peaks[impl] < budget_gib:
        jax.block_until_ready(compiled(x, x, x))  # first call: allocation
        calls[impl] = lambda c=compiled: jax.block_until_ready(c(x, x, x))
    times = interleaved(calls, rounds)
    med = {k: f"{np.median(v):.2f}" for k, v in times.items()}
    growth = f"{peaks['chunked'] / prev:.2f}x" if prev else ""
    prev = peaks["chunked"]
    ratio, spread = "", ""
    if len(times) == 2:
      r, lo, hi = ratio_summary(times, "naive", "chunked")
      ratio, spread = f"{r:.2f}x", f"{lo:.2f}-{hi:.2f}"
    print(f"{n:>6}{peaks['naive']:>10.3f}{peaks['chunked']:>12.3f}{growth:>13}"
          f"{med.get('naive', 'too big'):>9}{med.get('chunked', 'too big'):>10}"
          f"{ratio:>14}{spread:>12}", flush=True)


def local_attention_memory(sides=(56, 112), channels=64, heads=8, kernel=7, batch=1):
  """Local self-attention's temporaries (XLA's memory analysis of the
  compiled forward, and of forward + backward) on side x side feature maps,
  next to global attention over the same map (every pixel to every pixel,
  the [HW, HW] weights a local layer must not build) and to the layer with
  its k^2 offsets unrolled instead of scanned; then the time of a
  forward + backward of each local form (alternating windows)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attnlab.nn import kernels
  from attnlab.nn import vision

  def global_attention(x):
    q = x.reshape(x.shape[0], -1, heads, channels // heads)
    return kernels.dot_product_attention(q, q, q)

  print(f"batch {batch}, {channels} channels, {heads} heads, {kernel} x {kernel} "
        "neighbourhoods, float32; temporaries in MiB (XLA memory analysis)")
  print(f"{'map':>10}{'local fwd':>11}{'local fwd+bwd':>15}{'unrolled fwd':>14}"
        f"{'unrolled fwd+bwd':>18}{'global fwd':>12}{'one [HW,HW] f32':>17}")
  timers = {}
  for side in sides:
    x = jax.ShapeDtypeStruct((batch, side, side, channels), jnp.float32)
    row = []
    for name, unroll in (("scanned", False), ("unrolled", True)):
      layer = vision.LocalSelfAttention(channels, heads, kernel, unroll=unroll)
      params = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
      fwd = lambda p, x, layer=layer: layer.apply(p, x)[0]
      grad = jax.grad(lambda p, x, fwd=fwd: fwd(p, x).sum())
      for fn in (fwd, grad):
        row.append(jax.jit(fn).lower(params, x).compile().memory_analysis().temp_size_in_bytes)
      if side == sides[0]:
        real = jax.random.normal(jax.random.PRNGKey(0), x.shape)
        p = layer.init(jax.random.PRNGKey(1), real)
        step = jax.jit(grad)
        jax.block_until_ready(step(p, real))
        timers[name] = lambda step=step, p=p, real=real: [
            jax.block_until_ready(step(p, real)) for _ in range(3)]
    row.append(jax.jit(global_attention).lower(x).compile().memory_analysis().temp_size_in_bytes)
    mib = [f"{b / 2 ** 20:,.1f}" for b in row]
    print(f"{side:>4} x {side:<3}{mib[0]:>11}{mib[1]:>15}{mib[2]:>14}{mib[3]:>18}{mib[4]:>12}"
          f"{(side * side) ** 2 * 4 / 2 ** 20:>17,.1f}", flush=True)
  times = interleaved(timers, rounds=5)
  med, lo, hi = ratio_summary(times, "unrolled", "scanned")
  print(f"forward + backward at {sides[0]} x {sides[0]}: scanned "
        f"{np.median(times['scanned']) / 3 * 1e3:.0f} ms, unrolled "
        f"{np.median(times['unrolled']) / 3 * 1e3:.0f} ms; scanned {med:.2f}x the unrolled "
        f"speed (rounds {lo:.2f}-{hi:.2f})")


def dino_head_layouts(out_dim=65536, bottleneck=256, rows=64, rounds=5, calls=3):
  """Milliseconds per call (median over alternating rounds) of DINO's last
  layer on `rows` bottleneck vectors, forward and forward + backward with
  the loss: flax's nn.WeightNorm around a Dense (an [in, out] kernel, norms
  over its leading axis) against dino_head.WeightNormLinear (an [out, in]
  kernel, norms over its trailing axis); then the two reductions alone and
  the centre's batch mean both ways."""
  import functools
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attnlab.models import dino_head
  from experiments import dino

  class FlaxWeightNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.WeightNorm(nn.Dense(out_dim, use_bias=False), feature_axes=-1)(x)
  x = jax.random.normal(jax.random.PRNGKey(0), (rows, bottleneck))
  x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  jobs = {}
  for name, layer in (("flax nn.WeightNorm(Dense)", FlaxWeightNorm()),
                      ("dino_head.WeightNormLinear", dino_head.WeightNormLinear(out_dim))):
    params = layer.init(jax.random.PRNGKey(1), x)["params"]

    def loss(p, layer=layer):
      out = layer.apply({"params": p}, x).reshape(2, rows // 2, -1)
      return dino.dino_loss(out, out, jnp.zeros(out_dim), 0.1, 0.04)[0]
    jobs[f"{name}: forward"] = (jax.jit(lambda p, layer=layer: layer.apply({"params": p}, x)),
                                params)
    jobs[f"{name}: forward + backward"] = (jax.jit(jax.grad(loss)), params)
  v = jax.random.normal(jax.random.PRNGKey(2), (bottleneck, out_dim))
  jobs[f"sum over the leading axis of [{bottleneck}, {out_dim}]"] = (
      jax.jit(lambda a: jnp.sum(a * a, 0)), v)
  jobs[f"sum over the trailing axis of [{out_dim}, {bottleneck}]"] = (
      jax.jit(lambda a: jnp.sum(a * a, 1)), v.T.copy())
  teacher = jax.random.normal(jax.random.PRNGKey(3), (2, rows // 2, out_dim))
  center = jnp.zeros(out_dim)
  jobs["centre: jnp.mean over rows"] = (
      jax.jit(lambda t: 0.9 * center + 0.1 * jnp.mean(t, axis=(0, 1))), teacher)
  jobs["centre: dino.update_center (ones @ rows)"] = (
      jax.jit(lambda t: dino.update_center(center, t, 0.9)), teacher)

  def window(f, a):
    for _ in range(calls):
      out = f(a)
    jax.block_until_ready(out)
  for f, a in jobs.values():
    window(f, a)  # compiled before timing
  times = interleaved({k: functools.partial(window, f, a) for k, (f, a) in jobs.items()}, rounds)
  print(f"DINO last layer, {rows} rows of {bottleneck} -> {out_dim:,} outputs, float32; "
        f"{rounds} alternating rounds of {calls} calls")
  for name, t in times.items():
    print(f"{1000 * float(np.median(t)) / calls:>9.1f} ms  {name}", flush=True)


def matmul_backends(rounds=7, flops_per_window=2e10):
  """XLA:CPU's float32 matmul against PyTorch's at the shapes of the steps
  these benchmarks compare (ViT-S/16 with DINO's 2 x 224 + 6 x 96 crops at
  batch 8, the Transformer at base dims, batch 16 x 64), forward and
  weight-gradient forms, in alternating windows of about
  `flops_per_window` FLOPs each: the median ratio says whether a step's gap
  to a PyTorch peer is in the matmul library or in everything else.
  torch importable (installed for this benchmark only)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  torch.set_num_threads(os.cpu_count())
  shapes = {  # name: (m, k, n) of an [m, k] x [k, n] product
      "ViT-S/16 224 qkv": (16 * 197, 384, 1152),
      "ViT-S/16 224 MLP in": (16 * 197, 384, 1536),
      "ViT-S/16 224 MLP out": (16 * 197, 1536, 384),
      "ViT-S/16 224 MLP in, dW": (384, 16 * 197, 1536),
      "ViT-S/16 96 MLP in": (48 * 37, 384, 1536),
      "Transformer FFN in": (1024, 512, 2048),
      "Transformer FFN in, dW": (512, 1024, 2048),
      "Transformer logits": (1024, 512, 32000),
  }
  product = jax.jit(jnp.matmul)
  print(f"float32, {torch.get_num_threads()} torch threads; {rounds} rounds, alternating")
  print(f"{'':>26}{'XLA GFLOP/s':>13}{'torch GFLOP/s':>15}{'XLA / torch (median)':>22}{'rounds':>13}")
  for name, (m, k, n) in shapes.items():
    a, b = (np.random.default_rng(0).standard_normal(s, np.float32) for s in ((m, k), (k, n)))
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    reps = max(1, round(flops_per_window / (2 * m * k * n)))

    def xla():
      for _ in range(reps):
        out = product(ja, jb)
      out.block_until_ready()

    def pytorch():
      for _ in range(reps):
        torch.matmul(ta, tb)
    xla(), pytorch()  # compile, warm up
    times = interleaved({"xla": xla, "torch": pytorch}, rounds)
    med, lo, hi = ratio_summary(times, "torch", "xla")
    rate = lambda key: 2 * m * k * n * reps / float(np.median(times[key])) / 1e9
    print(f"{name:>26}{rate('xla'):>13.0f}{rate('torch'):>15.0f}{med:>21.2f}x"
          f"{lo:>7.2f}-{hi:.2f}", flush=True)
