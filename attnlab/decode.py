"""Decoding shared by every autoregressive model: sampling and beam search.
A model is seen through `step(state, token [B]) -> (state, logits [B, V])`,
so recurrent models (state = carry) and cached Transformers (state =
key/value cache) decode the same way.

A cache's cost follows its length, so models whose state holds one also
give `grow(state, length) -> state` with room for `length` tokens: the
decoding loop then runs in length buckets (length_buckets: 16, 32, 64, ...
tokens), each a loop of its own over a cache of the bucket's size, grown
in between; a step attends over at most twice the live length instead of
the longest possible output. The buckets are static shapes inside one
jitted program (one loop body per bucket: log2 of the length of them).
"""
import jax
import jax.numpy as jnp


FIRST_BUCKET = 16


def length_buckets(max_len, start=0):
  """The cache sizes of a decoding loop whose cache holds `start` tokens
  before its first step and `max_len` after its last: powers of two from
  FIRST_BUCKET, the last one max_len itself."""
  sizes, n = [], FIRST_BUCKET
  while n < max_len:
    if n > start:
      sizes.append(n)
    n *= 2
  return sizes + [max_len]


def sample(step, state, first_token, length, rng, temperature=1.0, grow=None, start=0):
  """Samples `length` tokens [B, length] after `first_token` [B].

  temperature 0 is greedy (argmax); otherwise softmax(logits / temperature).
  With `grow`, `state`'s cache holds `start` tokens (a prompt) and the loop
  runs in length buckets (module docstring).
  """
  def body(carry, key):
    state, token = carry
    state, logits = step(state, token)
    if temperature == 0:
      token = jnp.argmax(logits, -1)
    else:
      token = jax.random.categorical(key, logits / temperature, axis=-1)
    token = token.astype(first_token.dtype)
    return (state, token), token
  keys = jax.random.split(rng, length)
  carry, pieces, done = (state, first_token), [], 0
  for size in length_buckets(start + length, start) if grow else [start + length]:
    n = size - start - done  # steps until the cache is full
    if grow:
      carry = (grow(carry[0], size), carry[1])
    carry, tokens = jax.lax.scan(body, carry, keys[done:done + n])
    pieces.append(tokens)
    done += n
  return jnp.swapaxes(jnp.concatenate(pieces), 0, 1), carry[0]


def length_penalty(length, alpha):
  """GNMT (Wu et al. 2016, eq. 14): lp(Y) = ((5 + |Y|) / 6)^alpha."""
  return ((5.0 + length) / 6.0) ** alpha


def tile_beams(tree, beam):
  """Every leaf [B, ...] -> [B * beam, ...], each row repeated `beam` times
  in place (the row order beam_search calls `step` with)."""
  return jax.tree.map(lambda x: jnp.repeat(x, beam, axis=0), tree)


def beam_search(step, state, bos, eos, beam, max_len, alpha=0.6, grow=None, fixed=None,
                reorder=None):
  """Batched beam search; returns tokens [B, beam, max_len] (best first,
  EOS then zeros) and scores [B, beam] (log-prob / length penalty).

  `state` has a leading batch axis; `step(state, tokens [N]) -> (state,
  logits [N, V])` is called on batch * beam rows, and the rows of `state`
  follow their hypotheses each step. What does not change during the search
  (an encoder's output) goes in `fixed` instead: tiled to the beams once,
  never reordered, and passed as `step(state, tokens, fixed)`; `reorder(state,
  rows) -> state` replaces gathering every leaf of `state` by `rows` (a
  model's cheaper way, blocks.Stack.decode's beam slots). With `grow`
  the state holds a cache that the search grows in length buckets (module
  docstring): pass it with room for no tokens.
  A hypothesis ends at EOS; the search stops when no live hypothesis can
  beat the finished ones. A step may also return a third value [N, ...]
  (e.g. attention weights): then its values along each returned hypothesis
  come back too, as a third output [B, beam, max_len, ...].
  """
  batch = jax.tree.leaves(state)[0].shape[0]
  state = tile_beams(state, beam)
  reorder = reorder or (lambda state, rows: jax.tree.map(lambda x: x[rows], state))
  if fixed is not None:
    fixed, step_with = tile_beams(fixed, beam), step
    step = lambda state, tokens: step_with(state, tokens, fixed)
  tokens = jnp.full((batch * beam,), bos, jnp.int32)
  sizes = length_buckets(max_len) if grow else [max_len]
  out = jax.eval_shape(step, grow(state, sizes[0]) if grow else state, tokens)
  traced = len(out) == 3
  trace_shape = (batch, beam) + ((max_len,) + out[2].shape[1:] if traced else (0,))
  trace_dtype = out[2].dtype if traced else jnp.float32
  neg = jnp.float32(-1e9)
  init = dict(
      t=jnp.int32(0), state=state,
      tokens=tokens,
      seqs=jnp.zeros((batch, beam, max_len), jnp.int32),
      logp=jnp.tile(jnp.array([0.0] + [neg] * (beam - 1)), (batch, 1)),
      done_seqs=jnp.zeros((batch, beam, max_len), jnp.int32),
      done_scores=jnp.full((batch, beam), neg),
      trace=jnp.zeros(trace_shape, trace_dtype),
      done_trace=jnp.zeros(trace_shape, trace_dtype))

  def not_finished(c):
    # Best a live beam could still reach: its log-prob (only falls) over the
    # largest length penalty (alpha >= 0) it could have.
    best_live = c["logp"][:, 0] / length_penalty(max_len, alpha)
    worst_done = c["done_scores"][:, -1]
    return (c["t"] < max_len) & jnp.any(best_live > worst_done)

  def body(c):
    t = c["t"]
    state, logits, *extra = step(c["state"], c["tokens"])
    vocab = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, beam, vocab)
    cand = (c["logp"][:, :, None] + logp).reshape(batch, beam * vocab)
    top_logp, top_idx = jax.lax.top_k(cand, 2 * beam)  # >= beam not ending
    src_beam, token = top_idx // vocab, top_idx % vocab
    seqs = jnp.take_along_axis(c["seqs"], src_beam[:, :, None], axis=1)
    seqs = seqs.at[:, :, t].set(token)
    trace = jnp.take_along_axis(c["trace"], _expand(src_beam, c["trace"]), axis=1)
    if traced:
      now = extra[0].reshape((batch, beam) + extra[0].shape[1:])
      trace = trace.at[:, :, t].set(jnp.take_along_axis(now, _expand(src_beam, now), 1))
    ended = token == eos
    # Finished: merge hypotheses that just ended with the old finished ones.
    new_scores = jnp.where(ended, top_logp / length_penalty(t + 1, alpha), neg)
    all_scores = jnp.concatenate([c["done_scores"], new_scores], 1)
    all_seqs = jnp.concatenate([c["done_seqs"], seqs], 1)
    done_scores, keep = jax.lax.top_k(all_scores, beam)
    done_seqs = jnp.take_along_axis(all_seqs, keep[:, :, None], axis=1)
    all_trace = jnp.concatenate([c["done_trace"], trace], 1)
    done_trace = jnp.take_along_axis(all_trace, _expand(keep, all_trace), axis=1)
    # Alive: the best `beam` hypotheses that did not end.
    alive_logp, alive = jax.lax.top_k(jnp.where(ended, neg, top_logp), beam)
    rows = jnp.take_along_axis(src_beam, alive, 1)
    flat = (rows + jnp.arange(batch)[:, None] * beam).reshape(-1)
    # One beam: every hypothesis is its own parent's successor (no copy).
    return dict(t=t + 1, state=reorder(state, flat) if beam > 1 else state,
                tokens=jnp.take_along_axis(token, alive, 1).reshape(-1),
                seqs=jnp.take_along_axis(seqs, alive[:, :, None], axis=1),
                logp=alive_logp, done_seqs=done_seqs, done_scores=done_scores,
                trace=jnp.take_along_axis(trace, _expand(alive, trace), axis=1),
                done_trace=done_trace)

  c = init
  for size in sizes:
    if grow:
      c["state"] = grow(c["state"], size)
    c = jax.lax.while_loop(lambda c, size=size: not_finished(c) & (c["t"] < size), body, c)
  # A sentence with no finished hypothesis returns its live beams.
  none_done = c["done_scores"][:, :1] <= neg / 2
  live_scores = c["logp"] / length_penalty(c["t"], alpha)
  seqs = jnp.where(none_done[:, :, None], c["seqs"], c["done_seqs"])
  scores = jnp.where(none_done, live_scores, c["done_scores"])
  if not traced:
    return seqs, scores
  none_done = none_done.reshape(none_done.shape + (1,) * (c["trace"].ndim - 2))
  return seqs, scores, jnp.where(none_done, c["trace"], c["done_trace"])


def _expand(idx, x):
  """Indices [B, K] broadcast to take_along_axis over axis 1 of x [B, *, ...]."""
  return idx.reshape(idx.shape + (1,) * (x.ndim - 2))


def strip_after_eos(tokens, eos):
  """Zeros every position after the first EOS (rows [..., T])."""
  ended = jnp.cumsum(tokens == eos, axis=-1) - (tokens == eos) > 0
  return jnp.where(ended, 0, tokens)
