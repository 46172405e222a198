"""Our trainer's speed: train steps of configs side by side, the input pipeline
against what a step consumes, batches put on devices ahead, CLIP's memory
from 1 to 8 devices.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from benchmarks.timing import ROOT, Stepper, compiled_step, interleaved, pipeline_rate, ratio_summary, step_speeds


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
