"""Timing helpers shared by the benchmarks: alternating windows, median ratios, a
compiled train step with its batch, where a step's time goes.
"""
import os
import shutil
import sys
import tempfile
import time

from attnlab import cost

# The repository's root: runs and subprocesses start there.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def header():
  import jax
  print(f"$ python -m benchmarks {' '.join(sys.argv[1:])}")
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s), {os.cpu_count()} CPU cores")


def interleaved(contenders, rounds=5):
  """Seconds per call of each contender, timed in alternating windows (A, B,
  C, A, B, C, ...): on a shared, noisy machine a slow spell then hits every
  contender alike, where back-to-back windows (all of A, then all of B)
  charge it to whoever ran then. `contenders` maps a name to a function
  that runs one window (already compiled) and blocks until it is done.
  Returns {name: [seconds of each round]}."""
  times = {name: [] for name in contenders}
  for _ in range(rounds):
    for name, window in contenders.items():
      t0 = time.perf_counter()
      window()
      times[name].append(time.perf_counter() - t0)
  return times


def ratio_summary(times, base, name):
  """The median over rounds of base's time / name's time (> 1: name is
  faster), with the spread of the rounds."""
  import numpy as np
  r = np.asarray(times[base]) / np.asarray(times[name])
  return float(np.median(r)), float(r.min()), float(r.max())


class Stepper:
  """A jitted train step with its state and one fixed batch, compiled on
  creation: window(n) runs n steps and blocks until they are done."""

  def __init__(self, step, state, batch):
    self.step, self.state, self.batch = step, state, batch
    self.window(1)

  def window(self, n):
    import jax
    for _ in range(n):
      self.state, m = self.step(self.state, self.batch)
    jax.block_until_ready(m)


def against_peer(steps, item, batch, flops, peak, window, rounds):
  """Ours against a peer's training step in ONE process, alternating
  windows: `steps` = {"attnlab": (window_fn, params), peer: (window_fn,
  params)}, window_fn(n) runs n steps. Prints items/s, s/step, MFU (our
  step's XLA FLOPs against the measured peak) and each one's median ratio
  to the peer's speed with its range over the rounds."""
  import functools
  import numpy as np
  peer = list(steps)[-1]
  times = interleaved({name: functools.partial(fn, window) for name, (fn, _) in steps.items()},
                      rounds)
  width = max(len(name) for name in steps) + 2
  print(f"{'':>{width}}{'params':>13}{item + '/s':>10}{'s/step':>8}{'MFU':>7}"
        f"{'x ' + peer + ' (median)':>{len(peer) + 13}}{'rounds':>13}")
  for name, (_, n) in steps.items():
    secs = float(np.median(times[name])) / window
    med, lo, hi = ratio_summary(times, peer, name)
    print(f"{name:>{width}}{n:>13,}{batch / secs:>10.2f}{secs:>8.2f}"
          f"{100 * flops / secs / peak:>6.1f}%{med:>{len(peer) + 12}.2f}x{lo:>7.2f}-{hi:.2f}",
          flush=True)


def against_torch_peer(what, ours, count, flops, peak, peer, their_window, their_model,
                       item, batch, window, rounds):
  """against_peer for a PyTorch peer: warms its step up (as ours compiled),
  counts its parameters and prints the setting (`what`, then the rounds,
  torch's version and threads, the peak and our step's FLOPs) above the table."""
  import torch
  their_window(1)
  their_count = sum(p.numel() for p in their_model.parameters())
  print(f"{what}; {rounds} rounds of {window} step(s) each, alternating; torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); measured f32 matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s; our step {flops / 1e9:.1f} GFLOP (XLA)")
  against_peer({"attnlab": (ours.window, count), peer: (their_window, their_count)},
               item, batch, flops, peak, window, rounds)


def op_profile(stepper, top=12):
  """Where one step's time goes: a jax.profiler trace of one step, each
  traced XLA op mapped to the model code that made it (the optimised HLO's
  op_name metadata, layer numbers folded), summed. Thread time: ops that run
  side by side on the cores both count, so shares, not wall time, compare."""
  import collections
  import glob
  import gzip
  import json
  import re
  import jax
  hlo = stepper.step.lower(stepper.state, stepper.batch).compile().as_text()
  source = dict(re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"',
                           hlo, re.M))
  trace_dir = tempfile.mkdtemp()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    stepper.window(1)
  events = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]))
  shutil.rmtree(trace_dir)
  by_op = collections.Counter()
  for e in events["traceEvents"] if isinstance(events, dict) else events:
    if e.get("ph") == "X" and e.get("name") in source:
      name = re.sub(r"(encoderblock|encoder|decoder|layer)_\d+(/\1_\d+\._sublayer)?", "L", source[e["name"]])
      by_op[re.sub(r"^jit\([^)]*\)/", "", name)] += e["dur"] / 1e3
  kinds = collections.Counter()
  for name, ms in by_op.items():
    # A fused loop carries the name of its root op. The optimizer's update
    # of each parameter is one such loop, and the NaN guard's select
    # (outside any model scope) is its root: the loop is the whole update,
    # moments included, not the guard alone.
    op = name.rsplit("/", 1)[-1]  # the primitive; "transpose(jvp(...))/" marks the backward pass
    kinds["optimizer update (one fused loop per parameter)" if name == "jit(_where)/select_n" else
          "matmuls and convolutions" if op in ("dot_general", "conv_general_dilated") else
          "softmax" if "attention/vmap()/" in name and op in ("div", "reduce_max", "reduce_sum",
                                                            "exp", "sub") else
          "LayerNorm" if "_norm/" in name else
          "transposes and reshapes" if op.startswith(("transpose", "reshape", "copy")) else
          "selects (masks, ReLU and dropout gradients)" if op == "select_n" else "other elementwise"] += ms
  total = sum(by_op.values())
  print(f"one step: {total:,.0f} ms of op time over all threads")
  for name, ms in kinds.most_common():
    print(f"{ms:>9,.0f} ms {100 * ms / total:5.1f}%  {name}")
  print(f"top {top} ops by source (L = any layer):")
  for name, ms in by_op.most_common(top):
    print(f"{ms:>9,.0f} ms {100 * ms / total:5.1f}%  {name[:110]}")


def torch_op_profile(window, top=8):
  """Where one PyTorch step's time goes (torch.profiler, each op's own
  time on the calling thread, its intra-op threads inside it): matmuls and
  convolutions against the rest, the share to set beside op_profile's."""
  import collections
  import torch
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    window()
  own = collections.Counter({e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()})
  matmul = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
            "aten::convolution_backward", "aten::_convolution", "aten::linear_backward"}
  total = sum(own.values())
  mm = sum(ms for k, ms in own.items() if k in matmul)
  print(f"one step: {total:,.0f} ms of op time (wall, on the calling thread)")
  print(f"{mm:>9,.0f} ms {100 * mm / total:5.1f}%  matmuls and convolutions")
  print(f"{total - mm:>9,.0f} ms {100 * (total - mm) / total:5.1f}%  the rest")
  print(f"top {top} ops:")
  for k, ms in own.most_common(top):
    print(f"{ms:>9,.0f} ms {100 * ms / total:5.1f}%  {k}")


def compiled_step(spec, overrides=()):
  """The jitted train step of `spec` (CONFIG[:args] plus --config.KEY=VALUE
  overrides) on one real batch of its data, compiled: a dict with `window(n)`
  (n steps, blocking), its config, FLOPs and items per step, and the input
  iterator."""
  import jax
  from attnlab import main as main_lib
  from attnlab import sharding as sharding_lib
  from attnlab import train as train_lib
  from attnlab.data import catalog
  config, _ = main_lib.parse_config(["--config", spec, *overrides])
  catalog.prepare(config.data)  # fetched once, as `train` does
  workdir = tempfile.mkdtemp()
  exp = main_lib.experiment_module(config).Experiment(config, workdir)
  trainer = train_lib.Trainer(config, exp, workdir)
  data = exp.train_iter(trainer.local_batch, 0, 1)
  state = trainer.create_state()
  batch = sharding_lib.global_batch(next(data), trainer.mesh)
  step = jax.jit(trainer.step_fn(), donate_argnums=(0,)).lower(state, batch).compile()
  flops, _ = cost.flops_per_step(exp, config, step, trainer.mesh.devices.size)
  stepper = Stepper(step, state, batch)
  shutil.rmtree(workdir)
  return dict(spec=" ".join([spec, *overrides]), config=config, data=data,
              items=exp.items_per_step(config.batch_size), flops=flops,
              params=train_lib.param_count(stepper.state["params"]),
              window=stepper.window)


# The CPU comparisons with peers run both sides in float32: the pod recipes'
# bfloat16 (compute, Adam's first moment) is a TPU setting.
FLOAT32 = ["--config.model.dtype=float32", "--config.optim.mu_dtype=float32"]


def synthetic_step(spec, overrides, batch):
  """The trainer's jitted step of `spec` on a given batch, without data
  (the experiment built as for `compile`): (Stepper, XLA's FLOPs of the
  step, parameter count, the config)."""
  import jax
  from attnlab import main as main_lib
  from attnlab import train as train_lib
  config, _ = main_lib.parse_config(["--config", spec, *overrides])
  exp = main_lib.experiment_module(config).Experiment(config, None, read_data=False)
  workdir = tempfile.mkdtemp()
  trainer = train_lib.Trainer(config, exp, workdir)
  step = jax.jit(trainer.step_fn(), donate_argnums=(0,))
  state = trainer.create_state()
  flops = cost.step_flops(step.lower(state, batch).compile())
  stepper = Stepper(step, state, batch)
  shutil.rmtree(workdir)
  return stepper, flops, train_lib.param_count(stepper.state["params"]), config


def step_speeds(runs, rounds, window):
  """Steps/s of each compiled_step, in alternating windows; prints a table
  with each one's median speed relative to the first's."""
  import functools
  import numpy as np
  peak = cost.measured_peak_flops()
  times = interleaved({k: functools.partial(r["window"], window)
                       for k, r in runs.items()}, rounds)
  first = next(iter(runs))
  print(f"train steps, {rounds} alternating windows of {window} steps; f32 matmul "
        f"peak {peak / 1e9:.0f} GFLOP/s (measured)")
  print(f"{'':>12}{'params':>11}{'steps/s':>9}{'items/s':>10}{'GFLOP/step':>12}"
        f"{'MFU':>6}{'speed / first (median)':>24}{'rounds':>12}  config")
  for name, r in runs.items():
    sps = window / float(np.median(times[name]))
    med, lo, hi = ratio_summary(times, first, name)
    r["steps_per_sec"] = sps
    print(f"{name:>12}{r['params']:>11,}{sps:>9.2f}{sps * r['items']:>10,.0f}"
          f"{r['flops'] / 1e9:>12.1f}{100 * sps * r['flops'] / peak:>5.0f}%"
          f"{med:>23.2f}x{lo:>7.2f}-{hi:.2f}  {r['spec']}", flush=True)
  return times


def pipeline_rate(run, batches):
  """Batches/s of a run's input iterator alone (no train step)."""
  t0 = time.perf_counter()
  for _ in range(batches):
    next(run["data"])
  run["pipe"] = batches / (time.perf_counter() - t0)
