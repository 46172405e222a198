"""BERT: masked-LM pretraining and fine-tuning a passage classifier.

config.task
  pretrain  passages of Shakespeare ([CLS] seq_len-2 SentencePiece tokens
            [SEP]) corrupted by BERT's 80/10/10 rule; the loss is the
            cross-entropy over the chosen tokens. Evaluation: MLM loss and
            accuracy on the held-out plays under one fixed corruption, and
            a passage with the model's guesses for its masked words.
  classify  the [CLS] pooler + a new linear head predicts the First Folio
            genre of each passage's play. `init_from` (a pretrain workdir)
            supplies every parameter except the head. Evaluation: accuracy
            over the held-out plays' passages, per play, and a confusion
            matrix.
Held-out plays: validation (macbeth, tempest) during training; test
(hamlet, twelfth_night) once after it.

Ids: SentencePiece's 0 pad, 1 eos = [SEP], 2 bos = [CLS], 3 unk; [MASK] is
one id past the SentencePiece vocabulary.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab import checkpoint as ckpt_lib
from attnlab import config as config_lib
from attnlab import experiment as experiment_lib
from attnlab import viz
from attnlab.data import catalog
from attnlab.data import shakespeare
from attnlab.data import text as text_lib
from attnlab.data import tokenizer as tok_lib
from attnlab.evals import sharded
from attnlab.models import bert
from attnlab.nn import blocks

CLS, SEP = tok_lib.BOS, tok_lib.EOS
FIRST_REGULAR = tok_lib.UNK + 1


def validate(config):
  config_lib.check_choice(config, "task", {"pretrain", "classify"})
  config_lib.check(config.data.source == "shakespeare", "data.source",
                   f"{config.data.source!r} has no genre labels",
                   "use shakespeare (plays labelled by the First Folio)")
  blocks.validate(config)
  config_lib.check(config.data.seq_len > 2, "data.seq_len",
                   f"{config.data.seq_len} leaves no room between [CLS] and [SEP]",
                   "e.g. 128")
  config_lib.check(0 < config.mask_rate < 1, "mask_rate",
                   f"{config.mask_rate} is not in (0, 1)", "BERT uses 0.15")
  if config.init_from:
    config_lib.check(config.task == "classify", "init_from",
                     "only the classify task starts from a pretrained run",
                     "drop --config.init_from, or use configs/bert.py:classify")
    config_lib.check(bool(ckpt_lib.checkpoint_steps(config.init_from)),
                     "init_from", f"{config.init_from} has no checkpoints",
                     "give the --workdir of a finished configs/bert.py:pretrain run")


def passages(tokenizer, documents, seq_len):
  """Cuts each document into [CLS] + seq_len-2 tokens + [SEP] rows (the
  last one padded). Returns tokens [N, seq_len] and the document index of
  each row."""
  rows, doc = [], []
  for d, (_, text) in enumerate(documents):
    ids = [i for line in text.splitlines() if line.strip()
           for i in tokenizer.encode(line)]
    n = seq_len - 2
    for start in range(0, len(ids), n):
      rows.append([CLS] + ids[start:start + n] + [SEP])
      doc.append(d)
  return tok_lib.pad_batch(rows, seq_len), np.asarray(doc)


class Experiment(experiment_lib.Experiment):
  item_name = "passages"
  validate = staticmethod(validate)

  def __init__(self, config, workdir=None, read_data=True):
    super().__init__(config, workdir)
    data = config.data
    if read_data:
      # A fine-tuned run reads text with its pretrained run's ids.
      self.tokenizer = tok_lib.for_run(
          workdir, os.path.join(catalog.data_dir(data), "attnlab_spm"), data.source,
          self._train_lines, data.vocab_size, copy_from=config.init_from or None)
      self.mask_id = len(self.tokenizer)
    else:
      self.tokenizer, self.mask_id = None, data.vocab_size
    self.classify = config.task == "classify"
    m = config.model
    self.model = bert.BERT(
        self.mask_id + 1, d_model=m.d_model, num_heads=m.num_heads, d_ff=m.d_ff,
        num_layers=m.num_layers, max_len=data.seq_len, dropout=m.dropout,
        num_classes=len(shakespeare.GENRES) if self.classify else 0,
        implementation=m.implementation, scan=m.scan, remat=m.remat,
        dtype=jnp.dtype(m.get("dtype", "float32")))
    self._splits = {}
    self._guess_fn = None

  def _train_lines(self):
    for _, text in text_lib.load_documents(self.config.data, self.config.data.train_split):
      yield from (line for line in text.splitlines() if line.strip())

  def split(self, name):
    """(tokens [N, L], labels [N] (-1: no genre), play names [N]) of a
    split; only labelled passages when classifying."""
    if name not in self._splits:
      data = self.config.data
      docs = text_lib.load_documents(data, name)
      tokens, doc = passages(self.tokenizer, docs, data.seq_len)
      genre = [shakespeare.GENRES.index(shakespeare.FOLIO[n])
               if n in shakespeare.FOLIO else -1 for n, _ in docs]
      labels = np.asarray(genre)[doc]
      names = np.asarray([n for n, _ in docs])[doc]
      if self.classify:
        keep = labels >= 0
        tokens, labels, names = tokens[keep], labels[keep], names[keep]
      self._splits[name] = (tokens, labels, names)
    return self._splits[name]

  # --- what the trainer needs --------------------------------------------
  def abstract_batch(self, batch_size):
    """Shapes and dtypes of a training batch."""
    return {"tokens": jax.ShapeDtypeStruct((batch_size, self.config.data.seq_len), jnp.int32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def items_per_step(self, batch_size):
    return batch_size

  def flops_per_step(self, batch_size):
    """Matmul FLOPs of a train step: 3x the forward (the backward costs 2x)."""
    m, T = self.config.model, self.config.data.seq_len
    per_token = m.num_layers * blocks.layer_matmul_flops(m.d_model, m.d_ff, T)
    if not self.classify:  # the MLM head's dense layer and output
      per_token += 2 * m.d_model ** 2 + 2 * m.d_model * (self.mask_id + 1)
    return 3 * per_token * T * batch_size

  def train_iter(self, local_batch, process_index, process_count):
    import grain
    tokens, labels, _ = self.split(self.config.data.train_split)
    if jax.process_index() == 0:
      print(f"data: {len(tokens):,} training passages of {tokens.shape[1]} tokens "
            f"(vocabulary {self.mask_id + 1} with [MASK])", flush=True)
    n = len(tokens)
    epochs = self.config.total_steps * self.config.batch_size // max(n, 1) + 2
    ds = (grain.MapDataset.range(n).repeat(epochs).shuffle(seed=self.config.seed)
          [process_index::process_count]
          .map(lambda i: {"tokens": tokens[i], "label": np.int32(labels[i])}))
    return iter(ds.batch(local_batch, drop_remainder=True)
                .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))

  def init(self, rng, batch_size):
    x = jnp.ones((batch_size, self.config.data.seq_len), jnp.int32)
    return {"params": self.model.init(rng, x, x > 0)["params"]}

  def pretrained(self, params, model_state):
    """Every parameter but the classification head from `init_from`."""
    source = self.config.init_from
    if not source:
      return params, model_state, None
    loaded, _ = ckpt_lib.load_variables(source)
    mine = {k: v for k, v in params.items() if k != "classifier"}
    shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), t)
    if shapes(mine) != shapes(loaded):
      raise ValueError(f"init_from: {source} holds a different model; pretrain "
                       "with the same configs/bert.py size and data.vocab_size")
    return {**params, **loaded}, model_state, source  # BERT has no model_state

  def _forward(self, params, tokens, labels, rng, train):
    valid = tokens > 0
    if self.classify:
      _, aux = self.model.apply({"params": params}, tokens, valid, train=train,
                                rngs={"dropout": rng} if train else {})
      logits = aux["classes"].astype(jnp.float32)  # bfloat16 models too
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return nll, (logits.argmax(-1) == labels), jnp.ones_like(nll)
    mask_rng, drop_rng = jax.random.split(rng)
    inputs, chosen = bert.mask_tokens(mask_rng, tokens, valid, self.mask_id,
                                      self.mask_id, FIRST_REGULAR, self.config.mask_rate)
    logits, _ = self.model.apply({"params": params}, inputs, valid, train=train,
                                 rngs={"dropout": drop_rng} if train else {})
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
    return nll, (logits.argmax(-1) == tokens), chosen.astype(jnp.float32)

  def loss(self, params, state, batch, ctx):
    """Mean over the masked tokens (pretraining) or passages (classifying);
    the count is the loss weight, exact under gradient accumulation."""
    nll, correct, weight = self._forward(params, batch["tokens"], batch["label"],
                                         ctx.rng, True)
    n = weight.sum()
    loss = (nll * weight).sum() / jnp.maximum(n, 1)
    return loss, ({"accuracy": (correct * weight).sum() / jnp.maximum(n, 1),
                   "loss_weight": n}, state)

  # --- evaluation ---------------------------------------------------------
  def evaluate(self, state, mesh, step, writer):
    return self._evaluate(state, mesh, step, writer, self.config.data.eval_split, "eval")

  def finish(self, state, mesh, writer):
    """The test plays, once, after training."""
    return self._evaluate(state, mesh, int(state["step"]), writer,
                          self.config.data.test_split, "test")

  def _eval_rows(self, params, batch):
    """Per passage: summed loss, correct guesses and their count. One fixed
    corruption (the same key at every evaluation) so numbers compare
    across steps."""
    nll, correct, weight = self._forward(params, batch["tokens"], batch["label"],
                                         jax.random.PRNGKey(self.config.seed + 1), False)
    per_row = lambda x: x.reshape(x.shape[0], -1).sum(1)
    out = {"nll": per_row(nll * weight), "correct": per_row(correct * weight),
           "weight": per_row(weight)}
    if self.classify:  # for the per-play accuracies and the confusion matrix
      _, aux = self.model.apply({"params": params}, batch["tokens"], batch["tokens"] > 0)
      out["prediction"] = aux["classes"].argmax(-1)
    return out

  def _evaluate(self, state, mesh, step, writer, split, prefix):
    c = self.config
    tokens, labels, names = self.split(split)
    out = sharded.rows(self._eval_rows, state["params"], sharded.batches(
        {"tokens": tokens, "label": labels.astype(np.int32)}, c.batch_size, mesh))
    weight = out["weight"].sum()
    results = {f"{prefix}/loss": float(out["nll"].sum() / weight),
               f"{prefix}/accuracy": float(out["correct"].sum() / weight)}
    if jax.process_index() == 0:
      if self.classify:
        self._report_genres(out["prediction"], labels, names, f"{split}_step{step}",
                            writer, step)
      else:
        self._show_guesses(jax.device_get(state["params"]), tokens[len(tokens) // 2],
                           step, writer)
    return results

  def _report_genres(self, pred, labels, names, tag, writer, step):
    """Accuracy per held-out play, and the confusion matrix as a plot."""
    for play in sorted(set(names)):
      rows = names == play
      print(f"  {play:<16} {shakespeare.FOLIO[play]:<8} accuracy "
            f"{100 * (pred[rows] == labels[rows]).mean():5.1f}% over {rows.sum()} "
            "passages", flush=True)
    k = len(shakespeare.GENRES)
    counts = np.zeros((k, k), int)
    np.add.at(counts, (labels, pred), 1)
    viz.confusion(counts, shakespeare.GENRES,
                  os.path.join(self.workdir, "plots", f"confusion_{tag}.png"),
                  writer, step, title=f"genre of held-out passages, {tag.replace('_', ' ')}")

  def _show_guesses(self, params, row, step, writer):
    """A held-out passage with its masked words and the model's guesses."""
    if self._guess_fn is None:  # one compiled program (eagerly, every op compiles)
      def guess_fn(params, x, key):
        inputs, chosen = bert.mask_tokens(key, x, x > 0, self.mask_id, self.mask_id,
                                          FIRST_REGULAR, self.config.mask_rate)
        logits, _ = self.model.apply({"params": params}, inputs, x > 0)
        return logits.argmax(-1), chosen
      self._guess_fn = jax.jit(guess_fn)
    guess, chosen = jax.device_get(self._guess_fn(params, jnp.asarray(row[None]),
                                                  jax.random.PRNGKey(step)))
    guess = guess[0]
    pieces = self.tokenizer.pieces(row)
    out = []
    for i, t in enumerate(row):
      if t <= tok_lib.UNK:
        continue
      piece = pieces[i].replace("\u2581", " ")
      if bool(chosen[0, i]):
        said = self.tokenizer.pieces([guess[i]])[0].replace("\u2581", "")
        piece = f"{piece}[{said}]"
      out.append(piece)
    text = "".join(out).strip()
    print(f"--- masked words [model's guess], step {step} ---\n{text}\n---", flush=True)
    writer.write_text(step, "guesses", text)

