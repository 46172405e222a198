"""Translation with the RNN encoder-decoders (attnlab/models/seq2seq) and
the Transformer (attnlab/models/transformer): one objective, one decoder.

Training: teacher forcing, cross-entropy over target tokens (optional label
smoothing). Evaluation during training, on the validation split: loss,
sacreBLEU of beam-search translations, samples in workdir/samples/, source x
target alignment heatmaps. After training, once, on the test split: BLEU of
every sentence and BLEU per source-length bucket (bleu.json, a plot).
"""
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import config as config_lib
from attnlab import decode
from attnlab import experiment as experiment_lib
from attnlab import sharding as sharding_lib
from attnlab import storage
from attnlab import viz
from attnlab.data import catalog
from attnlab.data import tokenizer as tok_lib
from attnlab.data import translation
from attnlab.evals import bleu, sharded
from attnlab.models import seq2seq
from attnlab.models import transformer
from attnlab.nn import rnn as rnn_lib
from attnlab.nn import blocks


def validate(config):
  config_lib.check_choice(config, "model.model", set(MODELS))
  if config.model.model != "transformer":
    config_lib.check_choice(config, "model.cell", set(rnn_lib.CELLS))
    config_lib.check_choice(config, "model.score", {"dot", "general", "concat"})
    config_lib.check(config.model.num_layers >= 1, "model.num_layers", "must be >= 1",
                     "e.g. 1 (Bahdanau et al.) or 4 (Luong et al.)")
    config_lib.check(not config.data.get("pack", False), "data.pack",
                     "packing needs segment-aware attention", "use model=transformer")
  else:
    m = config.model
    config_lib.check("d_model" in m, "model.model", "this config has no Transformer "
                     "settings", "train the Transformer with configs/wmt.py")
    blocks.validate(config)
    config_lib.check_choice(config, "model.dtype", {"float32", "bfloat16"})
  if config.data.source == "folder":
    translation.check_folder(config.data)
  else:
    translation.check_languages(config.data)
  config_lib.check(config.data.max_len > 1, "data.max_len", "must be > 1", "e.g. 64")
  d = config.decode
  config_lib.check(d.beam >= 1, "decode.beam", "must be >= 1",
                   "use 1 for greedy-like search, 4 as in the papers")
  config_lib.check(d.beam <= config.data.vocab_size, "decode.beam",
                   f"{d.beam} hypotheses exceed the {config.data.vocab_size}-piece vocabulary",
                   "use a beam of at most the vocabulary size (4 as in the papers)")
  config_lib.check(d.alpha >= 0, "decode.alpha", f"length penalty {d.alpha} < 0 favours "
                   "short outputs and breaks beam search's early stop",
                   "use alpha >= 0 (0.6 as in Wu et al. 2016; 0 for none)")
  config_lib.check(LENGTH_QUANTUM + d.extra_len >= 1, "decode.extra_len",
                   f"max length = source length + {d.extra_len} < 1 leaves nothing to decode",
                   "use extra_len >= 0 (50 as in Vaswani et al.)")
  config_lib.check(d.batch_tokens >= 1, "decode.batch_tokens", f"{d.batch_tokens} must be >= 1",
                   "e.g. 2048 source tokens per batch")


MODELS = ("rnnencdec", "rnnsearch", "luong", "transformer")
LENGTH_QUANTUM = 32
PACKING = ("src_segments", "src_positions", "tgt_segments", "tgt_positions")


def make_model(m, vocab_size):
  if m.model == "transformer":
    return transformer.Transformer(
        vocab_size, d_model=m.d_model, num_heads=m.num_heads, d_ff=m.d_ff,
        enc_layers=m.enc_layers, dec_layers=m.dec_layers, dropout=m.dropout,
        attention_dropout=m.attention_dropout, pre_norm=m.pre_norm,
        learned_positions=m.learned_positions, implementation=m.implementation,
        scan=m.scan, remat=m.remat, dtype=jnp.dtype(m.dtype))
  return seq2seq.Seq2Seq(vocab_size, model=m.model, cell=m.cell, embed=m.embed,
                         hidden=m.hidden, score=m.score, dropout=m.dropout,
                         num_layers=m.num_layers)


def overlap(train_pairs, held_out):
  """Held-out pairs with a side that is also training text (it must be
  unseen: the builders drop such pairs; a user's folder may have them)."""
  seen = {x for pair in train_pairs for x in pair}
  return sum(1 for s, t in held_out if s in seen or t in seen)


def smoothed_cross_entropy(logits, labels, smoothing):
  """Cross-entropy [...] against optax.smooth_labels(one_hot(labels), e)
  (Szegedy et al. 2016), without building the [..., V] targets:
    -sum_j ((1 - e) [j = y] + e / V) log p_j
      = logsumexp(z) - (1 - e) z_y - e mean_j z_j,
  three reductions XLA fuses into one pass over the logits."""
  logits = logits.astype(jnp.float32)
  target = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return (jax.nn.logsumexp(logits, axis=-1) - (1 - smoothing) * target
          - smoothing * jnp.mean(logits, axis=-1))


def padded_length(n):
  """Sequence length rounded up to a multiple of LENGTH_QUANTUM."""
  return max(1, -(-n // LENGTH_QUANTUM)) * LENGTH_QUANTUM


class Experiment(experiment_lib.Experiment):
  capabilities = frozenset({"translate"})
  validate = staticmethod(validate)

  def __init__(self, config, workdir=None, read_data=True):
    super().__init__(config, workdir)
    data = config.data
    if data.get("pack", False):
      self.item_name = "rows"  # packed: each row holds several sentence pairs
    vocab_size = data.vocab_size
    if read_data:
      self.tokenizer = tok_lib.for_run(
          workdir, os.path.join(catalog.data_dir(data), "attnlab_spm"),
          data.source.replace("/", "_"), self._train_text, data.vocab_size)
      vocab_size = len(self.tokenizer)
    self.model = make_model(config.model, vocab_size)
    self._beams = {}  # (mesh, alignments, beam size) -> per-device beam search
    self._shapes = set()  # (beam search, rows, source length) compiled so far

  def _train_text(self):
    for s, t in translation.load_pairs(self.config.data, self.config.data.train_split):
      yield s
      yield t

  def flops_per_step(self, batch_size):
    """Matmul FLOPs of a train step: 3x the forward (the backward costs 2x)."""
    L = self.config.data.max_len
    count = (transformer.matmul_flops if self.config.model.model == "transformer"
             else seq2seq.matmul_flops)
    return 3 * batch_size * count(self.model, L, L)

  def train_iter(self, local_batch, process_index, process_count):
    config = self.config
    pairs = translation.load_pairs(config.data, config.data.train_split)
    src, tgt, keep = translation.encode_pairs(pairs, self.tokenizer, config.data.max_len)
    if jax.process_index() == 0:
      held = translation.load_pairs(config.data, config.data.eval_split)
      print(f"data: {len(pairs):,} training pairs, {len(held):,} {config.data.eval_split} "
            f"pairs, {overlap(pairs, held)} of them share a side with training text",
            flush=True)
      if len(keep) < len(pairs):  # said, so a short max_len never hides half the data
        print(f"data: {len(pairs) - len(keep):,} training pairs ({1 - len(keep) / len(pairs):.0%}) "
              f"are longer than data.max_len={config.data.max_len} pieces and are not "
              "trained on; raise --config.data.max_len to keep them", flush=True)
    return iter(translation.train_dataset(
        src, tgt, local_batch, process_index, process_count, config.total_steps,
        config.batch_size, config.seed, pack=config.data.get("pack", False)))

  def abstract_batch(self, batch_size):
    """Shapes and dtypes of a training batch."""
    shape = jax.ShapeDtypeStruct((batch_size, self.config.data.max_len), jnp.int32)
    keys = ("src", "tgt") + (PACKING if self.config.data.get("pack", False) else ())
    return {k: shape for k in keys}

  def init(self, rng, batch_size):
    x = jnp.ones((batch_size, self.config.data.max_len), jnp.int32)
    return {"params": self.model.init(rng, x, x > 0, x)["params"]}

  def _forward(self, params, batch, train, rng=None):
    src, tgt = batch["src"], batch["tgt"]
    tgt_in = jnp.concatenate([jnp.full_like(tgt[:, :1], tok_lib.BOS), tgt[:, :-1]], 1)
    packing = {k: batch[k] for k in PACKING if k in batch}
    if packing:  # every packed example starts from BOS
      tgt_in = jnp.where(batch["tgt_positions"] == 0, tok_lib.BOS, tgt_in)
    logits, aux = self.model.apply({"params": params}, src, src > 0, tgt_in,
                                   train=train, rngs={"dropout": rng} if train else {},
                                   **packing)
    nll = smoothed_cross_entropy(logits, tgt, self.config.label_smoothing)
    return nll, tgt > 0, aux

  def loss(self, params, state, batch, ctx):
    """Mean over target tokens; their count is the loss weight, so that
    accumulated microbatches of unequal lengths average exactly."""
    nll, mask, _ = self._forward(params, batch, True, ctx.rng)
    tokens = mask.sum().astype(jnp.float32)
    loss = jnp.sum(nll * mask) / jnp.maximum(tokens, 1)
    return loss, ({"loss_weight": tokens}, state)  # logged as train/loss_weight

  # --- evaluation ---------------------------------------------------------
  # Both run on every device of the mesh (attnlab/evals/sharded): the loss
  # over padded, masked batches; beam search on each device's own rows.
  def _eval_loss_rows(self, params, batch):
    nll, mask, _ = self._forward(params, batch, False)
    return {"nll": jnp.sum(nll * mask, axis=1), "tokens": jnp.sum(mask, axis=1)}

  def _beam(self, params, batch, alignments=False, eos=tok_lib.EOS):
    """The best beam hypothesis [B, T] of each source row (and with
    `alignments` the attention it used [B, T, ...]); eos=-1 never ends
    (benchmarks)."""
    out = self.beam_search(params, batch["src"], alignments, eos)
    best = {"tokens": out[0][:, 0]}
    if alignments:
      best["weights"] = out[2][:, 0]
    return best

  def beam_search(self, params, src, alignments=False, eos=tok_lib.EOS):
    """decode.beam_search's (tokens, scores(, attention)) of every beam for
    source rows src [B, S]."""
    c = self.config
    # Vaswani et al.: at most the source length + 50 target tokens.
    max_len = src.shape[1] + c.decode.extra_len
    memory = self.model.apply({"params": params}, src, src > 0,
                              method=self.model.encode)
    # The Transformer's cache grows in length buckets and its rows are beam
    # slots, never copied when hypotheses change parents (attnlab/decode.py,
    # nn/blocks.Stack.decode); the encoder's output and keys/values are
    # tiled to the beams once and never reordered. A recurrent state has none
    # of this: it is one small vector per hypothesis.
    grow = getattr(self.model, "grow_state", None)
    if grow:
      state = self.model.apply({"params": params}, memory, 0, c.decode.beam,
                               method=self.model.initial_state)
    else:
      state = self.model.apply({"params": params}, memory, method=self.model.initial_state)
    fixed = {"memory": memory, "cross_kv": state.pop("cross_kv", None)}

    def step(state, token, fixed):
      if fixed["cross_kv"] is not None:
        state = dict(state, cross_kv=fixed["cross_kv"])
      dec, logits, weights = self.model.apply(
          {"params": params}, fixed["memory"], state, token,
          method=self.model.decode_step)
      dec.pop("cross_kv", None)
      return (dec, logits, weights) if alignments else (dec, logits)
    return decode.beam_search(step, state, tok_lib.BOS, eos, c.decode.beam,
                              max_len, c.decode.alpha, grow=grow, fixed=fixed,
                              reorder=getattr(self.model, "reorder_state", None))

  def _beam_rows(self, mesh, alignments):
    """The per-device beam search for this mesh, made once (the same object
    each call, so it compiles once per shape)."""
    key = (mesh, alignments, self.config.decode.beam)
    if key not in self._beams:
      self._beams[key] = sharded.per_device(
          functools.partial(self._beam, alignments=alignments), mesh)
    return self._beams[key]

  def translate(self, params, sentences, mesh=None, alignments=False):
    """Beam-search translations of a list of source strings, whole (never
    truncated to the training length: long sentences are the point of
    Bahdanau et al.'s Figure 2), decoded on every device of `mesh` (default:
    all devices). Sentences are sorted by length and padded to a multiple of
    LENGTH_QUANTUM; each batch holds about decode.batch_tokens source
    tokens (more sentences when they are short), so batches waste little on
    padding and one shape is compiled per padded length (each new one is
    logged). With `alignments`, also per sentence the translation's ids
    (EOS included) and the attention weights the beam used [target ids,
    source ids]. Every process must call it (the batches span all hosts)."""
    mesh = mesh or sharding_lib.make_mesh((("data", -1),))
    beam = self._beam_rows(mesh, alignments)
    ids = [self.tokenizer.encode(s) for s in sentences]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out, aligned = [None] * len(ids), [None] * len(ids)
    i = 0
    while i < len(ids):
      length = padded_length(len(ids[order[i]]))
      batch = sharded.round_to_devices(max(1, self.config.decode.batch_tokens // length), mesh)
      rows = [r for r in order[i:i + batch] if padded_length(len(ids[r])) == length]
      i += len(rows)
      src = tok_lib.pad_batch([ids[r] for r in rows], length)
      shape = (id(beam), batch, length)
      if shape not in self._shapes:
        self._shapes.add(shape)
        if jax.process_index() == 0:
          buckets = decode.length_buckets(length + self.config.decode.extra_len)
          print(f"beam search (beam {self.config.decode.beam}): compiling for {batch} "
                f"sentences x {length} source tokens, {len(buckets)} length buckets "
                f"{'/'.join(map(str, buckets))} ({len(self._shapes)} compiled shapes so far)",
                file=sys.stderr, flush=True)  # stdout carries the translations
      best = sharded.gather(beam, params, next(sharded.batches({"src": src}, batch, mesh)))
      for j, r in enumerate(rows):
        seq = best["tokens"][j]
        out[r] = self.tokenizer.decode(seq)
        if alignments:
          n = list(seq).index(tok_lib.EOS) + 1 if tok_lib.EOS in seq else len(seq)
          aligned[r] = (seq[:n], best["weights"][j][:n, ..., :len(ids[r])])
    return (out, aligned) if alignments else out

  def evaluate(self, state, mesh, step, writer):
    c, params = self.config, state["params"]
    pairs = translation.load_pairs(c.data, c.data.eval_split)
    src, tgt, keep = translation.encode_pairs(pairs, self.tokenizer, c.data.max_len)
    loss = sharded.sums(self._eval_loss_rows, params,
                        sharded.batches({"src": src, "tgt": tgt}, c.batch_size, mesh))
    results = {"eval/loss": loss["nll"] / max(loss["tokens"], 1)}
    if c.decode.num_bleu:
      shown = pairs[:c.decode.num_bleu]
      hyps = self.translate(params, [s for s, _ in shown], mesh)
      score, signature = bleu.corpus_bleu(hyps, [t for _, t in shown])
      results["eval/bleu"] = score
      plotted = shown[:c.decode.num_plots]
      _, aligned = self.translate(params, [s for s, _ in plotted], mesh, alignments=True)
      if jax.process_index() == 0:
        self._write_samples(step, shown, hyps, score, signature, writer)
        self._plot_alignments(plotted, aligned, step, writer)
    return results

  def finish(self, state, mesh, writer):
    """Final report: BLEU of the whole test split, by source length
    (Bahdanau et al. 2015, Figure 2), as JSON, a table and a plot."""
    import json
    c = self.config
    pairs = translation.load_pairs(c.data, c.data.test_split)
    hyps = self.translate(state["params"], [s for s, _ in pairs], mesh)
    if jax.process_index() != 0:
      return {}
    refs = [t for _, t in pairs]
    score, signature = bleu.corpus_bleu(hyps, refs)
    buckets = bleu.bleu_by_length(hyps, refs, [len(s.split()) for s, _ in pairs],
                                  list(c.decode.buckets))
    shared = overlap(translation.load_pairs(c.data, c.data.train_split), pairs)
    report = {"bleu": score, "signature": signature, "split": c.data.test_split,
              "sentences": len(pairs), "sharing_a_side_with_training": shared,
              "by_source_length": [dict(lo=lo, hi=hi, n=n, bleu=b)
                                   for lo, hi, n, b in buckets]}
    storage.write_atomic(os.path.join(self.workdir, "bleu.json"), json.dumps(report, indent=1))
    viz.bleu_by_length(buckets, f"{c.model.model} ({c.data.source})",
                       os.path.join(self.workdir, "plots", "bleu_by_length.png"))
    print(f"test BLEU {score:.2f} on {len(pairs)} sentences ({signature}); {shared} "
          "of them share a side with training text")
    for lo, hi, n, b in buckets:
      print(f"  source words {lo:>3}-{hi - 1:<3} n={n:<5} BLEU {b:6.2f}")
    return {"test/bleu": score}

  def _write_samples(self, step, pairs, hyps, score, signature, writer):
    folder = os.path.join(self.workdir, "samples")
    lines = [f"BLEU {score:.2f} ({signature}) on {len(pairs)} "
             f"{self.config.data.eval_split} sentences", ""]
    for (s, t), h in list(zip(pairs, hyps))[:20]:
      lines += [f"SRC  {s}", f"REF  {t}", f"HYP  {h}", ""]
    text = "\n".join(lines)
    storage.write_atomic(os.path.join(folder, f"step_{step}.txt"), text)
    writer.write_text(step, "samples", text)
    print("\n".join(lines[:10]), flush=True)

  def _plot_alignments(self, pairs, aligned, step, writer):
    """Source x target attention of the model's own beam translations."""
    for i, ((s, _), (tgt_ids, w)) in enumerate(zip(pairs, aligned)):
      src_pieces = self.tokenizer.pieces(self.tokenizer.encode(s))
      tgt_pieces = self.tokenizer.pieces(tgt_ids)
      path = os.path.join(self.workdir, "plots", f"alignment_{i}.png")
      if w.ndim == 2:  # RNN: one attention
        viz.alignment(src_pieces, tgt_pieces, w, path, writer, step, f"alignment/{i}")
      else:  # Transformer: [target, layers, heads, source]
        viz.alignment_grid(src_pieces, tgt_pieces, np.moveaxis(w, 0, 2), path, writer,
                           step, f"alignment/{i}")
