"""Against the flax examples' WMT Transformer (a checkout's examples/wmt):
train steps and decoding, alternating windows in one process.
"""
import shutil
import tempfile
import time

from attnlab import cost
from benchmarks import peers
from benchmarks.timing import Stepper, interleaved, ratio_summary


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
  from flax import jax_utils
  from attnlab import main as main_lib
  from attnlab import train as train_lib
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
  # A lever against "attnlab float32" (a JAX setting, read when traced):
  ours("  dropout bits from rbg", prng="rbg")

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

  peak = cost.measured_peak_flops()
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
        "the protocol of an earlier figure):")
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
