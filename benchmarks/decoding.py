"""Decoding speed: beam search over trained runs, the key/value cache against
recomputing the prefix, GPT sampling.
"""
import os
import sys
import time
from benchmarks.timing import ROOT, interleaved, ratio_summary


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
