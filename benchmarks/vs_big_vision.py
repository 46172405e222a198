"""Against big_vision's ViT train step (a checkout's models/vit.py, its
optimizer and loss), alternating windows in one process.
"""
from attnlab import cost
from benchmarks import peers
from benchmarks.timing import FLOAT32, Stepper, interleaved, ratio_summary, synthetic_step


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

  rng = jax.random.PRNGKey(0)
  images = jax.random.uniform(rng, (batch, 224, 224, 3), jnp.float32, -1, 1)
  labels = jax.random.randint(rng, (batch,), 0, 1000)
  peak = cost.measured_peak_flops()
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
