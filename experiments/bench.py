"""Benchmarks that print numbers (never timed asserts in tests).

  python -m experiments.bench charlm [CONFIG_ARGS...] [--no_cold_start]
      step tokens/s + MFU (several CONFIG_ARGS, e.g. cell=lstm cell=gru:
      alternating windows, median ratios), input pipeline examples/s vs
      what a step consumes, cold start to the first step (of the first)
  python -m experiments.bench steps SPEC [--config.K=V...] [SPEC ...]
      train steps/s of several configs (CONFIG[:args] and overrides, each
      on its own data) in alternating windows: median ratio, spread
  python -m experiments.bench compare WORKDIR...     table of finished runs
  python -m experiments.bench curves WORKDIR... [--key K] [--x step|minutes]
      [--max_step N] [--out PNG]   one metric of several runs on one plot
  python -m experiments.bench gradflow WORKDIR...    how far back gradients
      reach: |d loss_T / d state_{T-d}| for trained char-LMs, and a plot
  python -m experiments.bench beam WORKDIR... [BEAM...]  beam-search
      translation of trained runs' validation split: sentences/s, tokens/s
      and BLEU per beam size (default 1 and 4); several runs alternate
  python -m experiments.bench decode                 greedy decoding of 128
      new tokens with the Transformer (base dims): key/value cache vs full
      recomputation of the prefix at every step
  python -m experiments.bench flaxwmt DIR          train-step target tokens/s
      and MFU at the Transformer's base dims, batch 16 x 64, f32 and bf16,
      against the flax WMT example (DIR = its examples/wmt) in alternating
      windows: the median ratio of the rounds and their spread; levers
      (rbg dropout bits, the one-hot loss, fused q/k/v) timed one at a time against ours
  python -m experiments.bench bigvision DIR [VARIANT...]   ViT training
      images/s (default Ti/16 and S/16) at 224, batch 8, f32, against
      big_vision's models/vit.py with its optimizer and loss (DIR = its
      checkout) in alternating windows: median ratio, spread, MFU
  python -m experiments.bench dino DIR [VARIANT]     DINO training images/s
      (default S/16) with 2 x 224 + 6 x 96 crops, batch 8, f32, against the
      authors' PyTorch DINO (DIR = its checkout; torch on PYTHONPATH) in
      alternating windows: median ratio, spread, MFU
  python -m experiments.bench dinohead              DINO's 65,536-wide last layer
      and centre: flax's nn.WeightNorm(Dense) against ours ([out, in] rows),
      and the XLA reductions behind the difference, in alternating windows
  python -m experiments.bench openclip [VARIANT]     CLIP training pairs/s
      (default B/32) at batch 8, context 77, f32, against open_clip's
      (open-clip-torch and torch on PYTHONPATH) in alternating windows
  python -m experiments.bench clipmem                CLIP's step, global vs local
      loss, 1 -> 8 devices at 32 pairs each: temporaries per device, pairs/s
      (JAX_NUM_CPU_DEVICES=8)
  python -m experiments.bench matmul                 XLA:CPU's matmul against
      PyTorch's at those steps' shapes (torch on PYTHONPATH), alternating
  python -m experiments.bench ahead SPEC [--config.K=V...]   whole training
      runs (the trainer's loop with its input pipeline) with
      config.device_put_ahead 0, 1 and 2, alternating: steps/s, median ratio
  python -m experiments.bench pipeline SPEC...       a config's input pipeline
      alone (batches/s, items/s) against what its train step consumes
  python -m experiments.bench swin [VARIANT]         Swin training images/s
      (default T) at 224, batch 8, f32, against timm's (timm and torch on
      PYTHONPATH) in alternating windows: median ratio, spread, MFU
  python -m experiments.bench localattention         local self-attention's
      temporaries at 56 x 56 and 112 x 112 (scanned, unrolled, and global
      attention over the map for contrast) and the two forms' speed
  python -m experiments.bench attention              self-attention forward +
      backward, naive vs memory-efficient: peak memory and time, n = 1k..16k

Each prints the command that made it, so README numbers can be re-made.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import peers  # noqa: E402  (the peers' steps, shared with benchmarks/)


def header():
  import jax
  print(f"$ python -m experiments.bench {' '.join(sys.argv[1:])}")
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


def compiled_step(spec, overrides=()):
  """The jitted train step of `spec` (CONFIG[:args] plus --config.KEY=VALUE
  overrides) on one real batch of its data, compiled: a dict with `window(n)`
  (n steps, blocking), its config, FLOPs and items per step, and the input
  iterator."""
  import jax
  from attnlab import main as main_lib
  from attnlab import sharding as sharding_lib
  from attnlab import train as train_lib
  config, _ = main_lib.parse_config(["--config", spec, *overrides])
  workdir = tempfile.mkdtemp()
  exp = main_lib.experiment_module(config).Experiment(config, workdir)
  trainer = train_lib.Trainer(config, exp, workdir)
  data = exp.train_iter(trainer.local_batch, 0, 1)
  step = jax.jit(trainer.step_fn(), donate_argnums=(0,))
  state = trainer.create_state()
  batch = sharding_lib.global_batch(next(data), trainer.mesh)
  flops = exp.flops_per_step(config.batch_size) if hasattr(exp, "flops_per_step") else None
  if flops is None:  # no analytic count (the experiment's models are not scanned)
    flops = train_lib.step_flops(step.lower(state, batch).compile())
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
  flops = train_lib.step_flops(step.lower(state, batch).compile())
  stepper = Stepper(step, state, batch)
  shutil.rmtree(workdir)
  return stepper, flops, train_lib.param_count(stepper.state["params"]), config


def step_speeds(runs, rounds, window):
  """Steps/s of each compiled_step, in alternating windows; prints a table
  with each one's median speed relative to the first's."""
  import functools
  import numpy as np
  from attnlab import train as train_lib
  peak = train_lib.measured_peak_flops()
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


def bench_steps(args, rounds=5, window=5):
  """`bench steps SPEC [--config.K=V ...] [SPEC ...]`: several configs' train
  steps side by side (e.g. two models at their tuned settings)."""
  specs = []
  for a in args:
    if a.startswith("--config."):
      specs[-1][1].append(a)
    else:
      specs.append((a, []))
  runs = {f"#{i + 1}": compiled_step(spec, overrides)
          for i, (spec, overrides) in enumerate(specs)}
  step_speeds(runs, rounds, window)


def pipeline_rate(run, batches):
  """Batches/s of a run's input iterator alone (no train step)."""
  t0 = time.perf_counter()
  for _ in range(batches):
    next(run["data"])
  run["pipe"] = batches / (time.perf_counter() - t0)


def bench_pipeline(specs, rounds=3, window=5, batches=200):
  """`bench pipeline SPEC...`: each config's input pipeline alone, in
  batches and items per second, against what its train step consumes."""
  runs = {}
  for spec in specs:
    runs[spec] = compiled_step(spec)
    pipeline_rate(runs[spec], batches)
  step_speeds(runs, rounds, window)
  for name, r in runs.items():
    print(f"{name}: input pipeline {r['pipe']:,.1f} batches/s = "
          f"{r['pipe'] * r['items']:,.0f} {r['config'].experiment} items/s "
          f"(batch {r['config'].batch_size}); the step consumes "
          f"{r['steps_per_sec'] * r['items']:,.0f}/s: the pipeline is "
          f"{r['pipe'] / r['steps_per_sec']:,.1f}x that")


def bench_ahead(args, aheads=(0, 1, 2), rounds=3, steps=60):
  """`bench ahead SPEC [--config.K=V...]`: the trainer's own loop, input
  pipeline included, with each device_put_ahead, as whole `train` runs
  (subprocesses: ahead 0, 1, 2, 0, 1, 2, ...). Steps/s of a run is its
  logged windows after the first step (compilation excluded)."""
  import numpy as np
  from attnlab import metrics as metrics_lib
  spec, overrides = args[0], args[1:]
  rates = {k: [] for k in aheads}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(rounds):
      for k in aheads:
        wd = os.path.join(tmp, f"ahead{k}_{r}")
        cmd = [sys.executable, "-m", "attnlab.main", "train", "--config", spec,
               "--workdir", wd, f"--config.total_steps={steps}", "--config.eval_every=0",
               "--config.ckpt_every=0", "--config.final_test=False",
               "--config.eval_at_start=False", f"--config.device_put_ahead={k}", *overrides]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
          sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        rows = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
        timed = [r_ for r_ in rows if "train/steps_per_sec" in r_][1:]
        # Steps over seconds of the windows after the first logged step.
        gaps = np.diff([rows[0]["step"]] + [r_["step"] for r_ in timed])
        seconds = sum(g / r_["train/steps_per_sec"] for g, r_ in zip(gaps, timed))
        rates[k].append(float(gaps.sum() / seconds))
        print(f"round {r + 1}: device_put_ahead={k}: {rates[k][-1]:.2f} steps/s", flush=True)
  base = np.asarray(rates[aheads[0]])
  for k in aheads:
    ratio = np.asarray(rates[k]) / base
    print(f"device_put_ahead={k}: {np.median(rates[k]):.2f} steps/s (median of {rounds}); "
          f"x{np.median(ratio):.3f} of ahead={aheads[0]} (rounds {ratio.min():.3f}-"
          f"{ratio.max():.3f})")


def bench_charlm(args, cold_start=True, rounds=5, window=5):
  """The train step and the input pipeline of configs/charlm.py:ARG for each
  ARG; the train steps of several ARGs (e.g. cell=lstm cell=gru cell=rnn) are
  timed in alternating windows of `window` steps, medians of `rounds`."""
  runs = {}
  for arg in args or [""]:
    run = compiled_step("configs/charlm.py" + (f":{arg}" if arg else ""))
    pipeline_rate(run, 2000)
    runs[arg or "default"] = run
  step_speeds(runs, rounds, window)
  for name, r in runs.items():
    config = r["config"]
    print(f"{name}: {config.model.cell} hidden {config.model.hidden} x "
          f"{config.model.num_layers}, batch {config.batch_size} x "
          f"{config.data.seq_len}; input pipeline: {r['pipe']:,.0f} batches/s = "
          f"{r['pipe'] * config.batch_size:,.0f} examples/s = "
          f"{r['pipe'] * r['items']:,.0f} tokens/s, "
          f"{r['pipe'] / r['steps_per_sec']:,.0f}x what the step consumes")
  first = next(iter(runs))
  spec = runs[first]["spec"]
  if not cold_start:
    return

  # Cold start: a fresh process, from `python -m attnlab.main` to step 1.
  for label, cache in (("empty compile cache", tempfile.mkdtemp()),
                       ("warm compile cache", None)):
    for _ in range(2 if cache is None else 1):
      wd = tempfile.mkdtemp()
      env = dict(os.environ)
      env["JAX_COMPILATION_CACHE_DIR"] = cache or os.path.join(
          tempfile.gettempdir(), "attnlab-bench-cache")
      t0 = time.perf_counter()
      p = subprocess.Popen(
          [sys.executable, "-m", "attnlab.main", "train", "--config", spec,
           "--workdir", wd, "--config.eval_every=0"], cwd=ROOT, env=env,
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for line in p.stdout:
        if line.startswith("step 1/"):
          secs = time.perf_counter() - t0
          break
      p.kill()
      p.wait()
      shutil.rmtree(wd)
    print(f"cold start to first step ({label}): {secs:.1f}s")


def compare(workdirs):
  """One row per finished run, from its config.json and metrics.jsonl."""
  import json
  import jax
  from attnlab import metrics as metrics_lib
  from experiments import lm
  print(f"{'run':<22}{'cell':<6}{'hidden':>7}{'params':>10}{'steps':>7}"
        f"{'wall min':>10}{'tok/s':>8}{'MFU':>6}{'held-out nats/char':>20}"
        f"{'bits/char':>10}")
  for wd in workdirs:
    config = json.load(open(os.path.join(wd, "config.json")))
    rows = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
    last = lambda key: [r[key] for r in rows if key in r][-1]
    speeds = [r["train/tokens_per_sec"] for r in rows if "train/tokens_per_sec" in r]
    mfus = [r["train/mfu"] for r in rows if "train/mfu" in r]
    m = config["model"]
    vocab = len(json.load(open(os.path.join(wd, "vocab.json")))["chars"])
    model = lm.rnn_lm.RNNLM(vocab_size=vocab, cell=m["cell"], hidden=m["hidden"],
                            num_layers=m["num_layers"], embed=m["embed"])
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jax.numpy.zeros((1, 2), "int32"),
        model.zero_carry(1)))
    params = sum(x.size for x in jax.tree.leaves(shapes))
    print(f"{os.path.basename(wd.rstrip('/')):<22}{m['cell']:<6}{m['hidden']:>7}"
          f"{params:>10,}{rows[-1]['step']:>7}"
          f"{last('time/wall_sec') / 60:>10.1f}"
          f"{sorted(speeds)[len(speeds) // 2]:>8,.0f}"
          f"{100 * sorted(mfus)[len(mfus) // 2]:>5.0f}%"
          f"{last('eval/loss'):>20.3f}{last('eval/bits_per_char'):>10.3f}")


def curves(args):
  """`key` of several runs on one plot (PNG), against steps or minutes."""
  import argparse
  from attnlab import metrics as metrics_lib
  from attnlab import viz
  parser = argparse.ArgumentParser(prog="python -m experiments.bench curves")
  parser.add_argument("runs", nargs="+")
  parser.add_argument("--key", default="train/loss")
  parser.add_argument("--x", choices=("step", "minutes"), default="step")
  parser.add_argument("--out", default="runs/curves.png")
  parser.add_argument("--max_step", type=int, default=0, help="0: all")
  a = parser.parse_args(args)
  runs = {os.path.basename(wd.rstrip("/")):
          [r for r in metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
           if not a.max_step or r["step"] <= a.max_step] for wd in a.runs}
  viz.compare_runs(runs, a.key, a.out, a.x)
  for label, rows in runs.items():
    pts = [(r["step"], r[a.key]) for r in rows if a.key in r]
    if pts:
      print(f"{label:<24} {a.key} at step {pts[-1][0]}: {pts[-1][1]:.4f}")
  print(f"wrote {a.out}")


def gradflow(workdirs, distances=(1, 2, 4, 8, 16, 32, 64, 100), windows=8):
  """Norm of the gradient of the loss at the last character with respect to
  the recurrent state d characters earlier (Bengio et al. 1994; Pascanu et
  al. 2013): it vanishes geometrically in a vanilla RNN."""
  import json
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  import optax
  from attnlab import train as train_lib
  from attnlab.data import text as text_lib
  from experiments import lm
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  print(f"{'run':<16}" + "".join(f"{'d=' + str(d):>10}" for d in distances))
  for wd in workdirs:
    config = ml_collections.ConfigDict(json.load(open(os.path.join(wd, "config.json"))))
    exp = lm.Experiment(config, wd)
    params = train_lib.Trainer(config, exp, wd).restore_params()["params"]
    params = jax.device_get(params)
    text = text_lib.load_text(config.data, config.data.eval_split)
    model = exp.model

    @jax.jit
    def grad_norm(carry, tokens, target):
      def loss(c):
        logits, _ = model.apply({"params": params}, tokens, c)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits[:, -1], target).sum()
      g = jax.grad(loss)(carry)
      return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g)))

    norms = []
    for d in distances:
      vals = []
      for w in range(windows):
        start = 5000 + w * 1000
        ids = jnp.asarray(exp.vocab.encode(text[start:start + 200 + d + 1]))[None]
        _, aux = model.apply({"params": params}, ids[:, :200], model.zero_carry(1))
        vals.append(float(grad_norm(aux["carry"], ids[:, 200:200 + d],
                                    ids[:, 200 + d])))
      norms.append(np.mean(vals))
    name = f"{config.model.cell} ({os.path.basename(wd.rstrip('/'))})"
    print(f"{config.model.cell:<16}" + "".join(f"{n:>10.2e}" for n in norms))
    ax.semilogy(distances, norms, marker="o", label=name)
  ax.set_xlabel("distance d (characters)")
  ax.set_ylabel("|d loss_T / d state_{T-d}|")
  ax.set_title("How far back the gradient reaches")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  out = os.path.join(os.path.dirname(workdirs[0].rstrip("/")), "gradflow.png")
  fig.savefig(out, dpi=100)
  print(f"plot: {out}")


def attention(ns=(1024, 2048, 4096, 8192, 16384), heads=8, head_dim=64,
              budget_gib=16.0, rounds=3):
  """Peak memory is XLA's buffer assignment for the compiled program
  (arguments + outputs + temporaries), so a program too big to run here is
  still measured; it is timed only when it fits in `budget_gib`, naive and
  chunked in alternating calls (`rounds` each), reported as medians."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attnlab.nn import attention as att

  def loss(impl):
    def f(q, k, v):
      out = att.dot_product_attention(q, k, v, att.Mask(causal=True),
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


def beam(workdirs, beams=(1, 4), rounds=2, reference=False):
  """Beam-search translation of the validation split by each trained run in
  WORKDIRS, per beam size: one pass compiles (a program per padded source
  length), then the runs translate in alternating passes (`rounds` each);
  the figures are medians, and with several runs the speed relative to the
  first's. With `reference`, each run also translates with the beam search
  as it was (tests/reference_decode.py: a cache of the longest output, the
  whole state reordered at every step), and the bench says whether the
  translations are identical."""
  import jax
  import numpy as np
  from attnlab import main as main_lib
  from attnlab.data import tokenizer as tok_lib
  from attnlab.data import translation
  from attnlab.evals import bleu
  runs = {}
  for workdir in workdirs:
    config, exp, _, state = main_lib._restore(workdir)
    pairs = translation.load_pairs(config.data, config.data.eval_split)
    m = config.model
    size = (f"d_model {m.d_model}, {m.enc_layers}+{m.dec_layers} layers"
            if m.model == "transformer" else f"{m.cell} {m.hidden}")
    print(f"{workdir}: {m.model} ({size}), step {int(state['step'])}; "
          f"{config.data.source} {config.data.eval_split}: {len(pairs)} sentences, "
          f"batches of {config.decode.batch_tokens} source tokens, length penalty "
          f"alpha {config.decode.alpha}")
    run = dict(config=config, exp=exp, params=jax.device_get(state["params"]),
               sources=[s for s, _ in pairs], refs=[t for _, t in pairs])
    runs[workdir] = run
    if reference:
      sys.path.insert(0, os.path.join(ROOT, "tests"))
      import reference_decode
      old = main_lib._restore(workdir)[1]

      def search(params, src, alignments=False, eos=tok_lib.EOS, old=old):
        d = old.config.decode
        return reference_decode.translate_batch(
            old.model, params, src, tok_lib.BOS, eos, d.beam, src.shape[1] + d.extra_len,
            d.alpha, alignments)
      old.beam_search = search
      runs[f"{workdir} (reference)"] = dict(run, exp=old, same_as=workdir)
  print(f"{'beam':>5}{'compile+run s':>15}{'run s':>8}{'sentences/s':>13}"
        f"{'tokens/s':>10}{'BLEU':>7}{'speed / first':>19}  run")
  for b in beams:
    first_pass = {}
    for wd, r in runs.items():
      r["exp"].config.decode.beam = int(b)
      t0 = time.perf_counter()
      r["hyps"] = r["exp"].translate(r["params"], r["sources"])
      first_pass[wd] = time.perf_counter() - t0
    times = interleaved({wd: (lambda r=r: r["exp"].translate(r["params"], r["sources"]))
                         for wd, r in runs.items()}, rounds)
    first = next(iter(runs))
    for wd, r in runs.items():
      secs = float(np.median(times[wd]))
      tokens = sum(len(r["exp"].tokenizer.encode(h)) + 1 for h in r["hyps"])  # + EOS
      score, _ = bleu.corpus_bleu(r["hyps"], r["refs"])
      med, lo, hi = ratio_summary(times, first, wd)
      rel = f"{med:.2f}x ({lo:.2f}-{hi:.2f})" if wd != first else ""
      print(f"{b:>5}{first_pass[wd]:>15.1f}{secs:>8.1f}{len(r['hyps']) / secs:>13.1f}"
            f"{tokens / secs:>10.0f}{score:>7.2f}{rel:>19}  {wd}", flush=True)
    for wd, r in runs.items():
      if "same_as" in r:
        fast = runs[r["same_as"]]
        same = sum(a == b for a, b in zip(fast["hyps"], r["hyps"]))
        med, lo, hi = ratio_summary(times, wd, r["same_as"])
        print(f"      beam {b}: {r['same_as']} translates {med:.2f}x (rounds {lo:.2f}-{hi:.2f}) "
              f"as fast as the reference; identical translations: {same} / {len(r['hyps'])}",
              flush=True)


def decode_speed(new_tokens=128, batch=8, src_len=32, rounds=3):
  """Both decoders run the same jitted greedy loop over fixed shapes; the
  uncached one re-runs the whole decoder on the (padded) prefix each step."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attnlab.models import transformer
  model = transformer.Transformer(32000, d_model=512, num_heads=8, d_ff=2048,
                                  enc_layers=6, dec_layers=6, dropout=0.0)
  src = jax.random.randint(jax.random.PRNGKey(0), (batch, src_len), 4, 32000)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), src, src > 0, src[:, :4])

  @jax.jit
  def cached(params, src):
    memory = model.apply(params, src, src > 0, method=model.encode)
    state = model.apply(params, memory, new_tokens, method=model.initial_state)

    def body(carry, _):
      state, token = carry
      state, logits, _ = model.apply(params, memory, state, token,
                                     method=model.decode_step)
      token = jnp.argmax(logits, -1).astype(jnp.int32)
      return (state, token), token
    bos = jnp.full((batch,), 2, jnp.int32)
    return jax.lax.scan(body, (state, bos), None, length=new_tokens)[1].T

  @jax.jit
  def uncached(params, src):
    memory = model.apply(params, src, src > 0, method=model.encode)

    def body(t, tokens):
      logits, _ = model.apply(params, memory, tokens, method=model.decode)
      nxt = jnp.argmax(logits[:, t], -1).astype(jnp.int32)
      return tokens.at[:, t + 1].set(nxt)
    tokens = jnp.zeros((batch, new_tokens + 1), jnp.int32).at[:, 0].set(2)
    return jax.lax.fori_loop(0, new_tokens, body, tokens)[:, 1:]

  print(f"Transformer base dims (32k vocab, 6+6 layers, d_model 512), random "
        f"weights, batch {batch}, source {src_len} tokens, greedy, "
        f"{new_tokens} new tokens")
  results = {name: np.asarray(jax.block_until_ready(fn(params, src)))  # compile
             for name, fn in (("cached", cached), ("uncached", uncached))}
  times = interleaved({"cached": lambda: jax.block_until_ready(cached(params, src)),
                       "uncached": lambda: jax.block_until_ready(uncached(params, src))},
                      rounds)
  for name, ts in times.items():
    secs = float(np.median(ts))
    print(f"{name:>9}: {secs:6.2f} s, {batch * new_tokens / secs:8.1f} tokens/s "
          f"(median of {rounds} alternating calls)", flush=True)
  r, lo, hi = ratio_summary(times, "uncached", "cached")
  print(f"cached / uncached speed: {r:.1f}x (rounds {lo:.1f}-{hi:.1f})")
  same = (results["cached"] == results["uncached"]).mean()
  print(f"same tokens: {100 * same:.1f}%")


def gpt_sampling(lengths=(128, 1024), batch=1, rounds=3, temperature=1.0):
  """Sampling `lengths` new tokens from a GPT (configs/gpt.py's small dims,
  random weights) three ways, timed in alternating windows: the cache grown
  in length buckets (decode.sample with grow, as experiments/lm samples),
  one cache of the full length (as before the buckets), and no cache (each
  step re-runs the model on the whole padded sequence). The same random
  keys, so all three draw the same tokens up to float rounding."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attnlab import decode
  from attnlab.models import gpt
  vocab = 65  # Shakespeare's characters
  model = gpt.GPT(vocab, d_model=192, num_heads=6, d_ff=768, num_layers=4,
                  max_len=max(lengths) + 1, dropout=0.0)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, 8), jnp.int32))
  step = lambda state, token: model.apply(params, state, token, method=model.decode_step)
  first = jnp.zeros((batch,), jnp.int32)
  rng = jax.random.PRNGKey(2)
  print(f"GPT, configs/gpt.py's small dims (d_model 192, 6 heads, 4 layers, {vocab} "
        f"characters), random weights, batch {batch}, temperature {temperature}")
  print(f"{'new tokens':>10}{'':>2}{'way':<34}{'s':>8}{'tokens/s':>10}{'x no cache':>12}"
        f"{'same tokens':>13}")
  for n in lengths:
    @jax.jit
    def buckets(params):
      state = model.apply(params, batch, 0, method=model.initial_state)
      return decode.sample(step, state, first, n, rng, temperature, grow=model.grow_state)[0]

    @jax.jit
    def full(params):
      state = model.apply(params, batch, n, method=model.initial_state)
      return decode.sample(step, state, first, n, rng, temperature)[0]

    @jax.jit
    def uncached(params):
      keys = jax.random.split(rng, n)

      def body(t, tokens):
        logits = model.apply(params, tokens)[0][:, t]
        nxt = jax.random.categorical(keys[t], logits / temperature, axis=-1)
        return tokens.at[:, t + 1].set(nxt.astype(jnp.int32))
      tokens = jnp.zeros((batch, n + 1), jnp.int32).at[:, 0].set(first)
      return jax.lax.fori_loop(0, n, body, tokens)[:, 1:]
    ways = {"cache grown in length buckets": buckets, "one cache of the full length": full,
            "no cache (recompute all)": uncached}
    out = {name: np.asarray(fn(params)) for name, fn in ways.items()}  # compile
    times = interleaved({name: (lambda fn=fn: jax.block_until_ready(fn(params)))
                         for name, fn in ways.items()}, rounds)
    for name in ways:
      secs = float(np.median(times[name]))
      med, lo, hi = ratio_summary(times, "no cache (recompute all)", name)
      same = (out[name] == out["no cache (recompute all)"]).mean()
      print(f"{n:>10}{'':>2}{name:<34}{secs:>8.2f}{batch * n / secs:>10.0f}"
            f"{med:>11.1f}x{100 * same:>12.1f}%", flush=True)


def flax_decode(flax_dir, batch=8, src_len=32, new_tokens=63, beams=(4, 1), rounds=5,
                window=2):
  """Beam search (and greedy = beam 1) of the flax WMT example over its own
  model and cache against ours, in one process, timed in alternating
  windows of `window` batches: random weights at the same dims, the same
  random source batch, EOS never produced, so both decode `new_tokens`."""
  import jax
  import numpy as np
  from attnlab import main as main_lib
  from experiments import translate

  flax_models, flax_train = peers.import_flax_wmt(flax_dir)
  vocab, d, heads, d_ff, layers = 8192, 256, 4, 1024, 3
  src = jax.random.randint(jax.random.PRNGKey(0), (batch, src_len), 4, vocab)

  config, _ = main_lib.parse_config(["--config", "configs/wmt.py:ding"])
  config.model.update(d_model=d, num_heads=heads, d_ff=d_ff, enc_layers=layers,
                      dec_layers=layers, dropout=0.0)
  config.decode.extra_len = new_tokens - src_len  # max_len = source + extra
  config.data.vocab_size = vocab
  exp = translate.Experiment(config, None, read_data=False)
  params = jax.jit(exp.init, static_argnums=1)(jax.random.PRNGKey(1), batch)["params"]

  cfg = flax_models.TransformerConfig(
      vocab_size=vocab, output_vocab_size=vocab, share_embeddings=True,
      logits_via_embedding=True, emb_dim=d, num_heads=heads, num_layers=layers,
      qkv_dim=d, mlp_dim=d_ff, max_len=256, dropout_rate=0.0,
      attention_dropout_rate=0.0, deterministic=True, decode=False)
  their_params = jax.jit(flax_models.Transformer(cfg).init)(
      jax.random.PRNGKey(1), src, src)["params"]
  predict_cfg = cfg.replace(decode=True)
  max_decode_len = new_tokens + 1  # its sequences start with the BOS slot
  cache = flax_train.initialize_cache(src, max_decode_len, predict_cfg)

  print(f"flax examples/wmt beam search against attnlab's, random weights: vocab {vocab}, "
        f"d_model {d}, {heads} heads, FFN {d_ff}, {layers}+{layers} layers; batch {batch}, "
        f"source {src_len} tokens, {new_tokens} decoded tokens (EOS disabled); "
        f"{rounds} rounds of {window} batches each")
  print(f"{'beam':>5}{'attnlab s/batch':>17}{'flax s/batch':>14}{'attnlab / flax time':>21}"
        f"{'rounds':>13}")
  for beam in beams:
    config.decode.beam = beam
    ours = jax.jit(lambda p, s: exp._beam(p, {"src": s}, eos=-1)["tokens"])
    theirs = jax.jit(lambda p, s, c: flax_train.predict_step(
        s, p, c, eos_id=-1, max_decode_len=max_decode_len, config=predict_cfg,
        beam_size=beam))
    out = {"attnlab": np.asarray(ours(params, src)),  # compile
           "flax": np.asarray(theirs(their_params, src, cache))}
    assert out["attnlab"].shape[-1] == new_tokens, out["attnlab"].shape
    assert out["flax"].shape[-1] == new_tokens, out["flax"].shape  # best, BOS slot dropped

    def run(fn, *args):
      return lambda: [jax.block_until_ready(fn(*args)) for _ in range(window)]
    times = interleaved({"attnlab": run(ours, params, src),
                         "flax": run(theirs, their_params, src, cache)}, rounds)
    r = np.asarray(times["attnlab"]) / np.asarray(times["flax"])
    print(f"{beam:>5}{np.median(times['attnlab']) / window:>17.3f}"
          f"{np.median(times['flax']) / window:>14.3f}{np.median(r):>20.2f}x"
          f"{r.min():>8.2f}-{r.max():.2f}", flush=True)


def flax_wmt(flax_dir, rounds=5, window=2, sequential=10, batch=16, length=64):
  """Train steps of the flax WMT example and of ours at its base dims, in one
  process, on the same random full-length batches, timed in alternating
  windows of `window` steps (ours f32, ours bf16, theirs, ... `rounds`
  times); the figure is the median ratio of the rounds, with their spread.

  Also timed, to explain figures made otherwise: the back-to-back protocol
  (`sequential` steps of one, then of the other, in both orders) and the
  flax step under jit(vmap) instead of its pmap on this one device.

  FLAX_DIR is google/flax's examples/wmt (fetched, never committed). Its
  train.py imports TensorFlow and its input pipeline at the top, for data
  this benchmark does not use: stand-ins let its real train_step run.
  """
  import functools
  import jax
  import optax
  from flax import jax_utils
  from attnlab import main as main_lib
  from attnlab import train as train_lib
  from attnlab.nn import attention as att
  from experiments import translate

  vocab, d, heads, d_ff, layers = 32000, 512, 8, 2048, 6
  rng = jax.random.PRNGKey(0)
  tokens = jax.random.randint(rng, (2, batch, length), 4, vocab)
  src, tgt = tokens[0], tokens[1]

  # Ours: configs/wmt.py:base at this batch, attention dropout as theirs.
  config, _ = main_lib.parse_config(["--config", "configs/wmt.py:base"])
  config.batch_size = batch
  config.data.update(max_len=length, pack=False)
  config.model.attention_dropout = 0.1
  contenders = {}

  def ours(name, dtype="float32", prng="threefry2x32"):
    config.model.dtype = dtype
    jax.config.update("jax_default_prng_impl", prng)  # read when traced
    config.data.vocab_size = vocab
    exp = translate.Experiment(config, None, read_data=False)
    workdir = tempfile.mkdtemp()
    trainer = train_lib.Trainer(config, exp, workdir)
    step = jax.jit(trainer.step_fn(), donate_argnums=(0,))
    contenders[name] = Stepper(step, trainer.create_state(), {"src": src, "tgt": tgt})
    jax.config.update("jax_default_prng_impl", "threefry2x32")
    shutil.rmtree(workdir)
    return exp.flops_per_step(batch)
  flops = ours("attnlab float32")
  ours("attnlab bfloat16", "bfloat16")
  # Levers, one at a time against "attnlab float32":
  ours("  dropout bits from rbg", prng="rbg")
  fused = translate.smoothed_cross_entropy
  translate.smoothed_cross_entropy = lambda logits, labels, e: optax.softmax_cross_entropy(
      logits, optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), e))
  ours("  loss on one-hot targets")  # as before the fused loss (and as flax)
  translate.smoothed_cross_entropy = fused
  att.FUSED_QKV = not att.FUSED_QKV
  ours("  q, k, v fused" if att.FUSED_QKV else "  q, k, v one by one")
  att.FUSED_QKV = not att.FUSED_QKV

  # Theirs: its own model, TrainState, optimizer and pmapped train_step.
  init, their_step = peers.flax_wmt_step(flax_dir, vocab, d, heads, d_ff, layers, 0.1, 0.1,
                                         "float32", length)
  their_start = jax.jit(init)(rng)
  rngs = jax.random.split(rng, 1)
  their_batch = {"inputs": src[None], "targets": tgt[None]}

  def their_state():
    return jax_utils.replicate(their_start)
  pmapped = jax.pmap(their_step, axis_name="batch", donate_argnums=(0,))
  contenders["flax examples/wmt (its pmap)"] = Stepper(
      lambda s, b: pmapped(s, b, dropout_rng=rngs), their_state(), their_batch)
  # The same function under jit(vmap) over the one-device axis: isolates
  # pmap's own cost from the model's.
  vmapped = jax.jit(jax.vmap(their_step, axis_name="batch"), donate_argnums=(0,))
  contenders["flax examples/wmt (jit)"] = Stepper(
      lambda s, b: vmapped(s, b, dropout_rng=rngs), their_state(), their_batch)

  peak = train_lib.measured_peak_flops()
  print(f"base dims: vocab {vocab}, d_model {d}, {heads} heads, FFN {d_ff}, "
        f"{layers}+{layers} layers, dropout 0.1 + attention dropout 0.1, "
        f"batch {batch} x {length} tokens; {flops / 1e9:.0f} GFLOP/step "
        f"(analytic matmuls); measured f32 matmul peak {peak / 1e9:.0f} GFLOP/s")
  base = "flax examples/wmt (its pmap)"
  times = interleaved({k: functools.partial(c.window, window)
                       for k, c in contenders.items()}, rounds)
  print(f"\nalternating windows: {rounds} rounds of {window} steps each, "
        f"{' / '.join(contenders)}:")
  print(f"{'':>30}{'tokens/s':>10}{'s/step':>8}{'MFU':>7}{'x flax (median)':>17}"
        f"{'rounds':>13}")
  import numpy as np
  for name, ts in times.items():
    secs = float(np.median(ts)) / window
    med, lo, hi = ratio_summary(times, base, name)
    print(f"{name:>30}{batch * length / secs:>10.0f}{secs:>8.2f}"
          f"{100 * flops / secs / peak:>6.1f}%{med:>16.2f}x{lo:>7.2f}-{hi:.2f}")

  for name in contenders:
    if name.startswith(("attnlab b", "  ")):
      med, lo, hi = ratio_summary(times, "attnlab float32", name)
      print(f"{name.strip()} / attnlab float32 speed: {med:.2f}x (rounds {lo:.2f}-{hi:.2f})")

  print(f"\nback to back ({sequential} steps of one, then of the other; "
        "the protocol of the earlier README figure):")
  ours, theirs = contenders["attnlab float32"], contenders[base]
  for order in ((ours, theirs), (theirs, ours)):
    secs = {}
    for c in order:
      t0 = time.perf_counter()
      c.window(sequential)
      secs[c] = time.perf_counter() - t0
    first = "ours first" if order[0] is ours else "flax first"
    print(f"{first:>30}: ours {batch * length * sequential / secs[ours]:.0f}, flax "
          f"{batch * length * sequential / secs[theirs]:.0f} target tokens/s: "
          f"{secs[theirs] / secs[ours]:.2f}x flax")


def big_vision_vit(bv_dir, variants=("Ti/16", "S/16"), batch=8, rounds=5, window=3):
  """Training images/s of our ViT against big_vision's (BV_DIR = a checkout
  of google-research/big_vision, fetched, never committed) at 224 x 224,
  batch 8, float32, one process: each side its own model, optimizer and
  loss from its i1k recipe (configs/vit.py:i1k and big_vision's
  configs/vit_i1k.py: Adam with clipping and decoupled weight decay, the
  sigmoid loss, the pre-logits layer), the same random batch, timed in
  alternating windows of `window` steps, `rounds` times; the figure is the
  median ratio. big_vision's step is its train.py update_fn without
  mixup (ours mixes in the input pipeline) and its
  gradient/parameter/update norms kept. MFU from XLA's FLOPs of our
  compiled step against a matmul peak measured in this run."""
  import functools
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attnlab import train as train_lib

  rng = jax.random.PRNGKey(0)
  images = jax.random.uniform(rng, (batch, 224, 224, 3), jnp.float32, -1, 1)
  labels = jax.random.randint(rng, (batch,), 0, 1000)
  peak = train_lib.measured_peak_flops()
  print(f"224 x 224, batch {batch}, float32, 1000 classes; {rounds} rounds of "
        f"{window} steps each, alternating; measured f32 matmul peak {peak / 1e9:.0f} GFLOP/s")
  print(f"{'':>22}{'params':>12}{'images/s':>10}{'s/step':>8}{'MFU':>7}"
        f"{'x big_vision (median)':>23}{'rounds':>13}")
  for variant in variants:
    # Ours: the trainer's own step on configs/vit.py:i1k.
    ours, flops, count, _ = synthetic_step(
        f"configs/vit.py:i1k,variant={variant}", [f"--config.batch_size={batch}", *FLOAT32],
        {"image": images, "label": labels})
    contenders = {"attnlab": ours}

    # Theirs: its model, optimizer (bv_optax.make) and loss from its config.
    init, update_fn = peers.big_vision_vit_step(bv_dir, variant)
    state = jax.jit(init)(rng, images)
    params = state["params"]
    their_step = jax.jit(update_fn, donate_argnums=(0,))
    their_batch = {"image": images, "labels": jax.nn.one_hot(labels, 1000)}
    contenders["big_vision"] = Stepper(lambda s, b: their_step(s, b, rng), state, their_batch)
    their_count = sum(x.size for x in jax.tree.leaves(params))

    times = interleaved({k: functools.partial(c.window, window)
                         for k, c in contenders.items()}, rounds)
    for name, n in (("attnlab", count), ("big_vision", their_count)):
      secs = float(np.median(times[name])) / window
      med, lo, hi = ratio_summary(times, "big_vision", name)
      print(f"{name + ' ' + variant:>22}{n:>12,}{batch / secs:>10.1f}{secs:>8.2f}"
            f"{100 * flops / secs / peak:>6.1f}%{med:>22.2f}x{lo:>7.2f}-{hi:.2f}", flush=True)


def dino_torch(dino_dir, variant="S/16", batch=8, local_crops=6, rounds=5, window=1):
  """Training images/s of our DINO step against the authors' PyTorch DINO
  (DINO_DIR = a checkout of facebookresearch/dino, fetched, never
  committed; torch importable, installed for this benchmark only): ViT-S/16,
  2 x 224 global + `local_crops` x 96 local crops, batch 8, float32, one
  process. Theirs: its vision_transformer (drop path 0.1), DINOHead (65,536
  outputs, learned last-layer norm, as configs/dino.py:i1k),
  MultiCropWrapper, DINOLoss, AdamW on get_params_groups, clip_gradients(3),
  cancel_gradients_last_layer and the teacher's EMA: the body of its
  train_one_epoch without CUDA. Ours: the trainer's step on
  configs/dino.py:i1k. Same random images, alternating windows; the figure
  is the median ratio. MFU from XLA's FLOPs of our step (both do the same
  arithmetic) against a matmul peak measured in this run."""
  import numpy as np
  import torch
  import torch.distributed as dist
  from attnlab import train as train_lib

  if not os.path.exists(os.path.join(dino_dir, "main_dino.py")):
    sys.exit(f"{dino_dir} has no main_dino.py: pass the root of a "
             "facebookresearch/dino checkout")
  # main_dino imports torchvision for its data loading and ResNet archs
  # (unused here): stand-ins unless torchvision is installed.
  torchvision_stand_in()
  sys.path.insert(0, dino_dir)
  import main_dino
  import utils as dino_utils
  import vision_transformer as vits
  # DINOLoss all-reduces its centre: a one-process group.
  if not dist.is_initialized():
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
  torch.set_num_threads(os.cpu_count())

  rng = np.random.default_rng(0)
  glob = rng.uniform(-1, 1, (batch, 2, 224, 224, 3)).astype(np.float32)
  local = rng.uniform(-1, 1, (batch, local_crops, 96, 96, 3)).astype(np.float32)
  peak = train_lib.measured_peak_flops()

  # Ours: the trainer's own step on configs/dino.py:i1k.
  spec = f"configs/dino.py:i1k,variant={variant}"
  ours, flops, count, config = synthetic_step(
      spec, [f"--config.batch_size={batch}", f"--config.dino.local_crops={local_crops}",
             *FLOAT32],
      {"global": glob, "local": local})

  # Theirs, as main_dino.train_dino builds it and train_one_epoch steps it.
  m, d, o = config.model, config.dino, config.optim
  arch = {"Ti": "vit_tiny", "S": "vit_small", "B": "vit_base"}[variant.split("/")[0]]
  patch = int(variant.split("/")[1])
  head = lambda: vits.DINOHead(vits.__dict__[arch]().embed_dim, m.out_dim,
                               norm_last_layer=m.norm_last_layer,
                               hidden_dim=m.head_hidden, bottleneck_dim=m.bottleneck)
  student = dino_utils.MultiCropWrapper(
      vits.__dict__[arch](patch_size=patch, drop_path_rate=m.drop_path), head())
  teacher = dino_utils.MultiCropWrapper(vits.__dict__[arch](patch_size=patch), head())
  teacher.load_state_dict(student.state_dict())
  for p in teacher.parameters():
    p.requires_grad = False
  loss_fn = main_dino.DINOLoss(m.out_dim, local_crops + 2, d.warmup_teacher_temp,
                               d.teacher_temp, 30, 100, d.student_temp, d.center_momentum)
  optimizer = torch.optim.AdamW(dino_utils.get_params_groups(student))
  views = ([torch.from_numpy(np.ascontiguousarray(glob[:, i].transpose(0, 3, 1, 2)))
            for i in range(2)] +
           [torch.from_numpy(np.ascontiguousarray(local[:, i].transpose(0, 3, 1, 2)))
            for i in range(local_crops)])

  def their_step():
    for i, group in enumerate(optimizer.param_groups):
      group["lr"] = o.lr
      if i == 0:
        group["weight_decay"] = o.weight_decay
    teacher_output = teacher(views[:2])
    loss = loss_fn(student(views), teacher_output, 0)
    optimizer.zero_grad()
    loss.backward()
    dino_utils.clip_gradients(student, o.clip_norm)
    dino_utils.cancel_gradients_last_layer(0, student, d.freeze_last_layer_epochs)
    optimizer.step()
    with torch.no_grad():
      momentum = d.momentum_teacher
      for q, k in zip(student.parameters(), teacher.parameters()):
        k.data.mul_(momentum).add_((1 - momentum) * q.detach().data)
    return loss.item()

  def their_window(n):
    for _ in range(n):
      their_step()
  against_torch_peer(f"DINO {variant}: 2 x 224 + {local_crops} x 96 crops, batch {batch}, "
                     f"float32, {m.out_dim:,} outputs", ours, count, flops, peak,
                     "PyTorch DINO", their_window, student, "images", batch, window, rounds)
  print("\nour step, profiled:")
  op_profile(ours)


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


def clip_memory(spec="configs/clip.py:emoji", per_device=32, devices=(1, 2, 4, 8),
                rounds=3, window=2):
  """CLIP's train step as the mesh grows (1 -> 8 devices of this process)
  at a fixed batch per device, so the global batch (every pair's count of
  negatives) grows with it: temporaries per device from XLA's memory
  analysis of the compiled step, and pairs/s timed in alternating windows,
  for the global-batch loss (XLA gathers) and the local one (shard_map:
  own rows against all columns). Random images and texts; run with
  JAX_NUM_CPU_DEVICES=8."""
  import functools
  import jax
  import numpy as np
  from attnlab import main as main_lib
  from attnlab import sharding as sharding_lib
  from attnlab import train as train_lib
  from attnlab.data import tokenizer
  from experiments import clip
  if jax.device_count() < max(devices):
    sys.exit(f"{jax.device_count()} devices: run with JAX_NUM_CPU_DEVICES={max(devices)}")
  print(f"{spec}, {per_device} pairs per device; {rounds} rounds of {window} steps, "
        "alternating between the two forms at each mesh size")
  print(f"{'devices':>8}{'global batch':>14}{'form':>8}{'temporaries / device':>22}"
        f"{'pairs/s':>9}{'local / global speed':>22}")
  for n in devices:
    contenders, memory = {}, {}
    for form in ("global", "local"):
      config, _ = main_lib.parse_config([
          "--config", spec, f"--config.mesh=((\"data\", {n}),)", "--config.mesh_subset=True",
          f"--config.batch_size={per_device * n}", f"--config.clip.loss_form={form}"])
      exp = clip.Experiment(config, None, read_data=False)
      workdir = tempfile.mkdtemp()
      trainer = train_lib.Trainer(config, exp, workdir)
      rng = np.random.default_rng(0)
      rows = config.batch_size
      tokens = rng.integers(4, config.data.vocab_size, (rows, config.data.context))
      tokens[:, -1] = tokenizer.EOS
      batch = sharding_lib.global_batch(
          {"image": rng.uniform(-1, 1, (rows, *exp.image_shape)).astype(np.float32),
           "tokens": tokens.astype(np.int32)}, trainer.mesh)
      step = jax.jit(trainer.step_fn(), donate_argnums=(0,))
      state = trainer.create_state()
      memory[form] = step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
      contenders[form] = Stepper(step, state, batch)
      trainer.writer.close()
      shutil.rmtree(workdir)
    times = interleaved({k: functools.partial(c.window, window)
                         for k, c in contenders.items()}, rounds)
    med, lo, hi = ratio_summary(times, "global", "local")
    for form in contenders:
      print(f"{n:>8}{per_device * n:>14}{form:>8}{memory[form] / 2**20:>18.1f} MiB"
            f"{window * per_device * n / float(np.median(times[form])):>9.0f}"
            + (f"{med:>17.2f}x ({lo:.2f}-{hi:.2f})" if form == "local" else ""), flush=True)


def clip_open_clip(variant="B/32", batch=8, rounds=5, window=1):
  """Training pairs/s of our CLIP step against open_clip's (open-clip-torch
  from PyPI, with torch and its dependencies on PYTHONPATH, installed for
  this benchmark only, imported here at run time): ViT-B/32 image tower at
  224 and the 12-layer, 512-wide text tower, context 77, vocabulary 49,408,
  random weights, batch 8, float32, one process. Theirs: create_model
  ("ViT-B-32"), ClipLoss, AdamW (b2 0.98, eps 1e-6, lr 5e-4, weight decay
  0.2 off gains and biases, as its train script) and the temperature
  clamp after the step. Ours: the trainer's step on configs/clip.py:laion
  with its layers unrolled and not rematerialised, as open_clip's.
  The same random images and token ids (each text ending in its
  end-of-text token), alternating windows; the figure is the median ratio.
  MFU from XLA's FLOPs of our step against a matmul peak measured here."""
  import functools
  import math
  import jax
  import numpy as np
  import open_clip
  import torch
  from open_clip.loss import ClipLoss
  from attnlab import train as train_lib
  from attnlab.data import tokenizer
  torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32)
  lengths = rng.integers(5, 77, batch)
  tokens = rng.integers(4, 49406, (batch, 77)).astype(np.int32)
  ours_tokens = np.where(np.arange(77) < lengths[:, None], tokens, 0)
  ours_tokens[np.arange(batch), lengths] = tokenizer.EOS  # EOS then padding
  theirs_tokens = np.where(np.arange(77) < lengths[:, None], tokens, 0)
  theirs_tokens[np.arange(batch), lengths] = 49407  # open_clip's end-of-text: the top id
  peak = train_lib.measured_peak_flops()

  ours, flops, count, _ = synthetic_step(
      "configs/clip.py:laion", [f"--config.model.variant={variant}",
                                f"--config.batch_size={batch}",
                                # as open_clip's step: layers unrolled, no remat
                                "--config.model.scan=False", "--config.model.remat=none",
                                *FLOAT32],
      {"image": jax.numpy.asarray(images), "tokens": jax.numpy.asarray(ours_tokens)})

  model = open_clip.create_model(f"ViT-{variant.replace('/', '-')}", pretrained=None)
  model.train()
  decay = [p for n, p in model.named_parameters()
           if p.ndim >= 2 and "bn" not in n and "ln" not in n and "logit_scale" not in n]
  rest = [p for n, p in model.named_parameters() if all(p is not q for q in decay)]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
  loss_fn = ClipLoss()
  pictures = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  texts = torch.from_numpy(theirs_tokens.astype(np.int64))

  def their_window(n):
    for _ in range(n):
      out = model(pictures, texts)
      if isinstance(out, dict):
        out = out["image_features"], out["text_features"], out["logit_scale"]
      loss = loss_fn(*out[:3])
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
  against_torch_peer(f"CLIP ViT-{variant} + 12 x 512 text tower, context 77, batch {batch}, "
                     f"float32, open_clip {open_clip.__version__}", ours, count, flops, peak,
                     "open_clip", their_window, model, "pairs", batch, window, rounds)
  print("\nour step, profiled:")
  op_profile(ours)
  print("\nopen_clip's step, profiled:")
  torch_op_profile(functools.partial(their_window, 1))


def torchvision_stand_in():
  """When torchvision cannot be imported (its wheel must match torch's
  build exactly), stand-in modules for every torchvision.* name, whose
  attributes are placeholder classes: a peer that imports torchvision only
  for data loading or optional layers (timm, the DINO code) then imports."""
  import importlib.abc
  import importlib.machinery
  import types
  try:
    import torchvision  # noqa: F401
    return
  except (ImportError, RuntimeError):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]

  class Placeholder(type):  # any class attribute is another placeholder
    def __getattr__(cls, attr):
      if attr.startswith("__"):
        raise AttributeError(attr)
      return Placeholder(attr, (), {"__init__": lambda self, *a, **k: None})

  class StandIn(types.ModuleType):
    def __getattr__(self, attr):
      if attr.startswith("__"):
        raise AttributeError(attr)
      return Placeholder(attr, (), {"__init__": lambda self, *a, **k: None})

  class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
      if name == "torchvision" or name.startswith("torchvision."):
        return importlib.machinery.ModuleSpec(name, self, is_package=True)
      return None

    def create_module(self, spec):
      module = StandIn(spec.name)
      module.__path__ = []
      return module

    def exec_module(self, module):
      pass
  sys.meta_path.insert(0, Finder())


def timm_swin(variant="T", batch=8, rounds=5, window=1):
  """Training images/s of our Swin step against timm's (timm and torch on
  PYTHONPATH, installed for this benchmark only, imported here at run
  time): Swin-T at 224 x 224, batch 8, float32, random weights, one
  process. Theirs: timm.create_model("swin_tiny_patch4_window7_224",
  drop_path_rate=0.2), label-smoothed cross-entropy (0.1), AdamW (lr 1e-3,
  weight decay 0.05 off biases, norms and the bias tables, as the Swin
  recipe) and clipping at 5. Ours: the trainer's step on
  configs/swin.py:i1k (the same recipe). The same random images and labels,
  alternating windows; the figure is the median ratio. MFU from XLA's FLOPs
  of our step against a matmul peak measured here."""
  import jax
  import numpy as np
  torchvision_stand_in()
  import timm
  import torch
  from attnlab import train as train_lib
  torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, batch).astype(np.int32)
  peak = train_lib.measured_peak_flops()
  ours, flops, count, _ = synthetic_step(
      f"configs/swin.py:i1k,variant={variant}", [f"--config.batch_size={batch}", *FLOAT32],
      {"image": jax.numpy.asarray(images), "label": jax.numpy.asarray(labels)})

  name = {"T": "swin_tiny_patch4_window7_224", "S": "swin_small_patch4_window7_224",
          "B": "swin_base_patch4_window7_224"}[variant]
  model = timm.create_model(name, drop_path_rate={"T": 0.2, "S": 0.3, "B": 0.5}[variant])
  model.train()
  decay = [p for n, p in model.named_parameters()
           if p.ndim > 1 and "relative_position_bias_table" not in n]
  rest = [p for n, p in model.named_parameters() if all(p is not q for q in decay)]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                 {"params": rest, "weight_decay": 0.0}], lr=1e-3)
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
  pictures = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  targets = torch.from_numpy(labels.astype(np.int64))

  def their_window(n):
    for _ in range(n):
      loss = loss_fn(model(pictures), targets)
      optimizer.zero_grad()
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
      optimizer.step()
  against_torch_peer(f"Swin-{variant} at 224 x 224, batch {batch}, float32, 1000 classes, "
                     f"timm {timm.__version__}", ours, count, flops, peak, "timm",
                     their_window, model, "images", batch, window, rounds)


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
  from attnlab.nn import attention as att
  from experiments import tables

  class Unrolled(att.LocalSelfAttention):
    """The same layer with jax.lax.scan unrolled over every offset."""
    def __call__(self, x, return_weights=False):
      with tables.unrolled_scans():
        return super().__call__(x, return_weights)

  def global_attention(x):
    q = x.reshape(x.shape[0], -1, heads, channels // heads)
    return att.dot_product_attention(q, q, q)

  print(f"batch {batch}, {channels} channels, {heads} heads, {kernel} x {kernel} "
        "neighbourhoods, float32; temporaries in MiB (XLA memory analysis)")
  print(f"{'map':>10}{'local fwd':>11}{'local fwd+bwd':>15}{'unrolled fwd':>14}"
        f"{'unrolled fwd+bwd':>18}{'global fwd':>12}{'one [HW,HW] f32':>17}")
  timers = {}
  for side in sides:
    x = jax.ShapeDtypeStruct((batch, side, side, channels), jnp.float32)
    row = []
    for layer in (att.LocalSelfAttention(channels, heads, kernel),
                  Unrolled(channels, heads, kernel)):
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
        timers[type(layer).__name__] = lambda step=step, p=p, real=real: [
            jax.block_until_ready(step(p, real)) for _ in range(3)]
    row.append(jax.jit(global_attention).lower(x).compile().memory_analysis().temp_size_in_bytes)
    mib = [f"{b / 2 ** 20:,.1f}" for b in row]
    print(f"{side:>4} x {side:<3}{mib[0]:>11}{mib[1]:>15}{mib[2]:>14}{mib[3]:>18}{mib[4]:>12}"
          f"{(side * side) ** 2 * 4 / 2 ** 20:>17,.1f}", flush=True)
  times = interleaved(timers, rounds=5)
  med, lo, hi = ratio_summary(times, "Unrolled", "LocalSelfAttention")
  print(f"forward + backward at {sides[0]} x {sides[0]}: scanned "
        f"{np.median(times['LocalSelfAttention']) / 3 * 1e3:.0f} ms, unrolled "
        f"{np.median(times['Unrolled']) / 3 * 1e3:.0f} ms; scanned {med:.2f}x the unrolled "
        f"speed (rounds {lo:.2f}-{hi:.2f})")


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


def main():
  sys.path.insert(0, ROOT)
  what = sys.argv[1] if len(sys.argv) > 1 else "charlm"
  header()
  if what == "charlm":
    bench_charlm([a for a in sys.argv[2:] if not a.startswith("--")],
                 cold_start="--no_cold_start" not in sys.argv)
  elif what == "steps":
    bench_steps(sys.argv[2:])
  elif what == "compare":
    compare(sys.argv[2:])
  elif what == "curves":
    curves(sys.argv[2:])
  elif what == "gradflow":
    gradflow(sys.argv[2:])
  elif what == "beam":
    dirs = [a for a in sys.argv[2:] if not a.isdigit() and not a.startswith("--")]
    sizes = [int(a) for a in sys.argv[2:] if a.isdigit()] or (1, 4)
    beam(dirs, sizes, reference="--reference" in sys.argv)
  elif what == "attention":
    attention()
  elif what == "pipeline":
    bench_pipeline(sys.argv[2:])
  elif what == "ahead":
    if len(sys.argv) < 3:
      sys.exit("usage: python -m experiments.bench ahead CONFIG[:args] [--config.KEY=VALUE ...]")
    bench_ahead(sys.argv[2:])
  elif what == "decode":
    decode_speed()
  elif what == "sample":
    gpt_sampling()
  elif what == "bigvision":
    if len(sys.argv) < 3:
      sys.exit("usage: python -m experiments.bench bigvision BIG_VISION_CHECKOUT [VARIANT...]")
    big_vision_vit(sys.argv[2], *([sys.argv[3:]] if len(sys.argv) > 3 else []))
  elif what == "dino":
    if len(sys.argv) < 3:
      sys.exit("usage: python -m experiments.bench dino DINO_CHECKOUT [VARIANT]")
    dino_torch(sys.argv[2], *sys.argv[3:4])
  elif what == "dinohead":
    dino_head_layouts()
  elif what == "openclip":
    clip_open_clip(*sys.argv[2:3])
  elif what == "clipmem":
    clip_memory()
  elif what == "matmul":
    matmul_backends()
  elif what == "swin":
    timm_swin(*sys.argv[2:3])
  elif what == "localattention":
    local_attention_memory()
  elif what == "flaxwmt":
    if len(sys.argv) < 3:
      sys.exit("usage: python -m experiments.bench flaxwmt FLAX_CHECKOUT/examples/wmt")
    flax_wmt(sys.argv[2])
  elif what == "flaxdecode":
    if len(sys.argv) < 3:
      sys.exit("usage: python -m experiments.bench flaxdecode FLAX_CHECKOUT/examples/wmt")
    flax_decode(sys.argv[2])
  else:
    sys.exit(f"unknown benchmark {what!r}: use charlm, steps, compare, curves, gradflow, beam, "
             "decode, sample, flaxwmt, flaxdecode, bigvision, dino, dinohead, matmul, clipmem, openclip, "
             "swin, localattention, attention, ahead or pipeline")


if __name__ == "__main__":
  main()
