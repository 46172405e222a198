"""The beam search as it was before attnlab/decode.py grew caches in length
buckets and kept fixed inputs out of the reordered state (commit aa7c71e):
every step runs over a state sized for the longest output, and every leaf
of it (caches, encoder output) is gathered to follow its hypotheses. The
fast search must return what this returns (tests/test_decode.py), and
`python -m benchmarks beam --reference` times it beside the fast one.
"""
import jax
import jax.numpy as jnp

from attnlab.decode import _expand, length_penalty


def beam_search(step, state, bos, eos, beam, max_len, alpha=0.6):
  """Batched beam search; returns tokens [B, beam, max_len] (best first,
  EOS then zeros) and scores [B, beam] (log-prob / length penalty).

  `state` has a leading batch axis; `step(state, tokens [N]) -> (state,
  logits [N, V])` is called on batch * beam rows. A hypothesis ends at EOS;
  the search stops when no live hypothesis can beat the finished ones.
  A step may also return a third value [N, ...] (e.g. attention weights):
  then its values along each returned hypothesis come back too, as a third
  output [B, beam, max_len, ...].
  """
  batch = jax.tree.leaves(state)[0].shape[0]
  tile = lambda x: jnp.repeat(x, beam, axis=0)
  state = jax.tree.map(tile, state)
  tokens = jnp.full((batch * beam,), bos, jnp.int32)
  out = jax.eval_shape(step, state, tokens)
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
    return dict(t=t + 1, state=jax.tree.map(lambda x: x[flat], state),
                tokens=jnp.take_along_axis(token, alive, 1).reshape(-1),
                seqs=jnp.take_along_axis(seqs, alive[:, :, None], axis=1),
                logp=alive_logp, done_seqs=done_seqs, done_scores=done_scores,
                trace=jnp.take_along_axis(trace, _expand(alive, trace), axis=1),
                done_trace=done_trace)

  c = jax.lax.while_loop(not_finished, body, init)
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




def translate_batch(model, params, src, bos, eos, beam, max_len, alpha, alignments=False):
  """experiments/translate's beam search over a batch of sources as it was:
  the encoder output and the whole decoding state (a cache of max_len
  tokens) in the state that beam search reorders. Returns what
  beam_search returns."""
  memory = model.apply({"params": params}, src, src > 0, method=model.encode)
  state = {"memory": memory, "dec": model.apply({"params": params}, memory, max_len,
                                                method=model.initial_state)}

  def step(state, token):
    dec, logits, weights = model.apply({"params": params}, state["memory"], state["dec"],
                                       token, method=model.decode_step)
    state = {"memory": state["memory"], "dec": dec}
    return (state, logits, weights) if alignments else (state, logits)
  return beam_search(step, state, bos, eos, beam, max_len, alpha)
