"""Language modelling objective: next-character prediction. RNN models
(model.name rnn_lm) use truncated backprop through time (the hidden state
is carried across consecutive windows of each stream; gradients stop at the
window border); the decoder-only Transformer (model.name gpt) sees each
window on its own, its context is the window.

Evaluations: held-out loss in nats/char (and bits/char) on text never
trained on; a sample written to workdir/samples/; at the end, the
interpretable-cell figures of Karpathy, Johnson & Fei-Fei (2015).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab import config as config_lib
from attnlab import decode
from attnlab import experiment as experiment_lib
from attnlab import sharding as sharding_lib
from attnlab import storage
from attnlab import viz
from attnlab.data import text as text_lib
from attnlab.models import gpt
from attnlab.models import rnn_lm
from attnlab.nn import rnn as rnn_lib
from attnlab.nn import blocks


def validate(config):
  text_lib.validate(config.data)
  config_lib.check_choice(config, "model.name", {"rnn_lm", "gpt"})
  config_lib.check(config.sample.length >= 1, "sample.length",
                   f"{config.sample.length}: nothing to sample", "sample at least 1 character")
  if config.model.name == "gpt":
    m = config.model
    blocks.validate(config)
    config_lib.check(config.data.seq_len + 1 <= m.max_len, "data.seq_len",
                     f"windows of {config.data.seq_len} + 1 exceed the {m.max_len} "
                     "learned positions", "raise model.max_len")
    config_lib.check(len(config.sample.prompt) + config.sample.length <= m.max_len,
                     "sample.length", f"prompt + sample exceed the {m.max_len} positions",
                     "sample fewer characters or raise model.max_len")
    config_lib.check(config.sample.length < m.max_len, "sample.length",
                     f"{config.sample.length} leaves no room for a prompt in the "
                     f"{m.max_len} positions", "sample fewer characters or raise model.max_len")
    return
  config_lib.check_choice(config, "model.cell", set(rnn_lib.CELLS))
  for key in ("hidden", "num_layers", "embed"):
    config_lib.check(config.model[key] > 0, f"model.{key}",
                     f"{config.model[key]} must be > 0",
                     f"set --config.model.{key} to a positive integer")
  config_lib.check(0 <= config.model.dropout < 1, "model.dropout",
                   f"{config.model.dropout} is not in [0, 1)", "e.g. 0.1")
  config_lib.check(config.data.seq_len > 1, "data.seq_len",
                   f"{config.data.seq_len} must be > 1", "e.g. 128")
  if config.data.source == "folder":
    n = len(text_lib.load_text(config.data, config.data.train_split))
    need = 2 * config.data.seq_len * config.batch_size
    config_lib.check(n >= need, "data.folder",
                     f"its training text ({n} characters) is too short for "
                     f"{config.batch_size} streams of {config.data.seq_len}",
                     f"give at least {need} characters or lower "
                     "batch_size / data.seq_len")
  config_lib.check(config.sample.temperature >= 0, "sample.temperature",
                   "must be >= 0", "use 0 for greedy, ~0.8 for samples")


class Experiment(experiment_lib.Experiment):
  item_name = "tokens"
  capabilities = frozenset({"sample"})
  validate = staticmethod(validate)

  def __init__(self, config, workdir=None, read_data=True):
    super().__init__(config, workdir)
    data = config.data
    if read_data:
      vocab_path = os.path.join(workdir, "vocab.json") if workdir else None
      self.vocab = text_lib.CharVocab.load_or_build(
          vocab_path, lambda: text_lib.load_text(data, data.train_split))
    else:  # shapes only: a byte's worth of ids where the config names no vocabulary
      self.vocab = text_lib.CharVocab(
          [chr(32 + i) for i in range(data.get("vocab_size", 256) - 1)])
    m = config.model
    self.recurrent = m.name == "rnn_lm"
    if self.recurrent:
      self.model = rnn_lm.RNNLM(
          vocab_size=len(self.vocab), cell=m.cell, hidden=m.hidden,
          num_layers=m.num_layers, embed=m.embed, dropout=m.dropout,
          dtype=jnp.dtype(m.dtype))
    else:
      self.model = gpt.GPT(len(self.vocab), d_model=m.d_model, num_heads=m.num_heads,
                           d_ff=m.d_ff, num_layers=m.num_layers, max_len=m.max_len,
                           dropout=m.dropout, implementation=m.implementation,
                           scan=m.scan, remat=m.remat,
                           dtype=jnp.dtype(m.get("dtype", "float32")))
    self._eval_step = self._sample_fn = None
    self._eval_windows = {}  # split -> the same windows at every evaluation
    self._cells_fn = None
    if not read_data:
      return
    unknown = self.unknown_chars(config.sample.prompt)
    config_lib.check(not unknown, "sample.prompt", f"has characters the training "
                     f"text never shows: {unknown}", "remove them from the prompt")
    self.prompt = config.sample.prompt or self._prompt_from_data()

  def unknown_chars(self, text):
    """Characters of `text` outside the vocabulary (they would be read as
    the unknown id, which no training window ever contained)."""
    return sorted(set(text) - set(self.vocab.chars[1:]))

  def _prompt_from_data(self):
    """The sample prompt when the config names none: the first line of the
    held-out text (at most 40 characters), so samples of any language or
    format start from something of its own."""
    first = text_lib.load_text(self.config.data, self.config.data.eval_split).lstrip()
    first = first.split("\n", 1)
    prompt = first[0][:40] + ("\n" if len(first) > 1 and len(first[0]) <= 40 else "")
    length = self.config.sample.length  # a GPT's positions hold prompt + sample
    prompt = prompt[:self.config.model.get("max_len", len(prompt) + length) - length]
    return "".join(c for c in prompt if c in self.vocab.index) or self.vocab.chars[1]

  # --- what the trainer needs --------------------------------------------
  def items_per_step(self, batch_size):
    return batch_size * self.config.data.seq_len

  def flops_per_step(self, batch_size):
    """Matmul FLOPs of a train step: 3x the forward (the backward costs 2x).
    XLA's cost analysis counts a scan's body once, not once per step."""
    m, T = self.config.model, self.config.data.seq_len
    if not self.recurrent:  # projections, FFN, scores and contexts, output
      per_token = (m.num_layers * blocks.layer_matmul_flops(m.d_model, m.d_ff, T)
                   + 2 * m.d_model * len(self.vocab))
      return 3 * per_token * self.items_per_step(batch_size)
    per_token = rnn_lib.matmul_flops_per_token(m.cell, m.embed, m.hidden,
                                               m.num_layers)
    per_token += 2 * m.hidden * len(self.vocab)
    return 3 * per_token * self.items_per_step(batch_size)

  def abstract_batch(self, batch_size):
    """Shapes and dtypes of a training batch."""
    shape = jax.ShapeDtypeStruct((batch_size, self.config.data.seq_len), jnp.int32)
    return {"inputs": shape, "targets": shape}

  def train_iter(self, local_batch, process_index, process_count):
    del process_count
    data = self.config.data
    ids = self.vocab.encode(text_lib.load_text(data, data.train_split))
    return iter(text_lib.train_dataset(
        ids, data.seq_len, self.config.batch_size, local_batch,
        process_index, self.config.total_steps, self.config.seed,
        stateful=data.stateful))

  def init(self, rng, batch_size):
    tokens = jnp.zeros((batch_size, self.config.data.seq_len), jnp.int32)
    if not self.recurrent:
      return {"params": self.model.init(rng, tokens)["params"]}
    carry = self.model.zero_carry(batch_size)
    return {"params": self.model.init(rng, tokens, carry)["params"], "carry": carry}

  def loss(self, params, state, batch, ctx):
    rng, carry = ctx.rng, state["carry"]
    if not self.recurrent:
      logits, _ = self.model.apply({"params": params}, batch["inputs"], train=True,
                                   rngs={"dropout": rng})
      nll = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), batch["targets"]).mean()  # bfloat16 models too
      return nll, ({"bits_per_char": nll / jnp.log(2.0)}, state)
    if not self.config.data.stateful:
      carry = jax.tree.map(jnp.zeros_like, carry)
    # Truncated BPTT: the carried state is an input, not a path for gradients.
    carry = jax.lax.stop_gradient(carry)
    logits, aux = self.model.apply({"params": params}, batch["inputs"], carry,
                                   train=True, rngs={"dropout": rng})
    nll = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["targets"]).mean()
    return nll, ({"bits_per_char": nll / jnp.log(2.0)}, dict(state, carry=aux["carry"]))

  # --- evaluation ---------------------------------------------------------
  def held_out_loss(self, params, mesh, split):
    """Mean nats/char over a held-out split's streams (carry across windows)."""
    config, data = self.config, self.config.data
    if split not in self._eval_windows:
      local = sharding_lib.local_batch_size(config.batch_size, mesh)
      text = text_lib.load_text(data, split)
      unknown = self.unknown_chars(text)
      if unknown and jax.process_index() == 0:
        print(f"note: {len(unknown)} characters of the held-out text never occur in "
              f"training ({''.join(unknown[:20])!r}); each counts as the unknown id",
              flush=True)
      ids = self.vocab.encode(text)
      self._eval_windows[split] = text_lib.eval_windows(
          ids, data.seq_len, config.batch_size, local, jax.process_index(),
          data.eval_chars)
    windows = self._eval_windows[split]
    if self._eval_step is None:
      def eval_step(params, carry, batch):
        if not self.recurrent:
          logits, _ = self.model.apply({"params": params}, batch[:, :-1])
          return carry, optax.softmax_cross_entropy_with_integer_labels(
              logits, batch[:, 1:]).sum()
        logits, aux = self.model.apply({"params": params}, batch[:, :-1], carry)
        nll = optax.softmax_cross_entropy_with_integer_labels(
            logits, batch[:, 1:]).sum()
        return aux["carry"], nll
      self._eval_step = jax.jit(eval_step)
    carry = jax.device_put(self.model.zero_carry(config.batch_size)
                           if self.recurrent else {},
                           sharding_lib.batch_sharding(mesh))
    total = 0.0
    for w in windows:
      carry, nll = self._eval_step(params, carry,
                                   sharding_lib.global_batch(w, mesh))
      total += float(nll)
    return total / (windows.shape[0] * config.batch_size * data.seq_len)

  def evaluate(self, state, mesh, step, writer):
    nats = self.held_out_loss(state["params"], mesh, self.config.data.eval_split)
    sample = self.sample(state["params"], self.prompt, self.config.sample.length,
                         self.config.sample.temperature, seed=step)
    if jax.process_index() == 0:
      storage.write_atomic(os.path.join(self.workdir, "samples", f"step_{step}.txt"), sample)
      writer.write_text(step, "samples", sample)
      print(f"--- sample at step {step} ---\n{sample}\n---", flush=True)
    return {"eval/loss": nats, "eval/bits_per_char": nats / np.log(2)}

  def sample(self, params, prompt, length, temperature, seed=0):
    """Feeds the prompt, then samples `length` characters after it."""
    prompt = prompt or self.prompt
    ids = jnp.asarray(self.vocab.encode(prompt))
    if self._sample_fn is None:
      def run(params, ids, rng, length, temperature):
        if not self.recurrent:
          return self._sample_gpt(params, ids, rng, length, temperature)
        carry = self.model.zero_carry(1)
        if ids.shape[0] > 1:  # all but the last character set the state
          _, aux = self.model.apply({"params": params}, ids[None, :-1], carry)
          carry = aux["carry"]

        def step(carry, token):
          logits, aux = self.model.apply({"params": params}, token[:, None], carry)
          return aux["carry"], logits[:, -1]
        return decode.sample(step, carry, ids[-1:], length, rng, temperature)[0]
      # Compiled once per prompt length, not once per call.
      self._sample_fn = jax.jit(run, static_argnames=("length", "temperature"))
    out = self._sample_fn(params, ids, jax.random.PRNGKey(seed), length=length,
                          temperature=float(temperature))
    return prompt + self.vocab.decode(np.asarray(out[0]))

  def _sample_gpt(self, params, ids, rng, length, temperature):
    """The prompt through the key/value cache, then sampling from it."""
    step = lambda state, token: self.model.apply(
        {"params": params}, state, token, method=self.model.decode_step)
    state = self.model.apply({"params": params}, 1, ids.shape[0] - 1,
                             method=self.model.initial_state)
    state, _ = jax.lax.scan(lambda st, tok: (step(st, tok[None])[0], None),
                            state, ids[:-1])
    return decode.sample(step, state, ids[-1:], length, rng, temperature,
                         grow=self.model.grow_state, start=ids.shape[0] - 1)[0]

  def finish(self, state, mesh, writer):
    """After training (and on `eval --split test`): nats/char on the test
    split, and the cell figures (over the validation text: an analysis,
    not a reported number)."""
    nats = self.held_out_loss(state["params"], mesh, self.config.data.test_split)
    if jax.process_index() == 0 and self.recurrent:
      report = self.cell_report(jax.device_get(state["params"]), self.workdir)
      print(f"interpretable cells (plots/cell_*.png):\n{report}", flush=True)
    return {"test/loss": nats, "test/bits_per_char": nats / np.log(2)}

  # --- interpretable cells (Karpathy et al. 2015, figures 2-3) -------------
  def cell_activations(self, params, text, carry=None, window=4096):
    """Yields [n, layers * hidden] cell states while reading `text` in
    windows (the state carried across), so any length fits in memory."""
    if self._cells_fn is None:
      def run(params, ids, carry):
        _, aux = self.model.apply({"params": params}, ids, carry)
        return jnp.concatenate([c[0] for c in aux["cells"]], -1), aux["carry"]
      self._cells_fn = jax.jit(run)
    ids = self.vocab.encode(text)
    carry = self.model.zero_carry(1) if carry is None else carry
    for start in range(0, len(ids), window):
      chunk = ids[start:start + window]
      padded = np.zeros(window, np.int32)
      padded[:len(chunk)] = chunk
      acts, new_carry = self._cells_fn(params, jnp.asarray(padded)[None], carry)
      carry = new_carry  # only the last window is padded; its carry is unused
      yield np.asarray(acts[:len(chunk)], np.float64)

  def cell_report(self, params, workdir, max_chars=None):
    """Ranks every cell by |Pearson r| with interpretable features over the
    whole held-out text, and renders the best cell of each feature over a
    passage where that feature changes."""
    text = text_lib.load_text(self.config.data, self.config.data.eval_split)
    text = text[:max_chars] if max_chars else text
    features = text_features(text)
    stats = {name: StreamingCorrelation() for name in features}
    pos = 0
    for acts in self.cell_activations(params, text):
      for name, values in features.items():
        stats[name].update(acts, values[pos:pos + len(acts)])
      pos += len(acts)
    out_dir = os.path.join(workdir, "plots")
    lines = []
    for name, values in features.items():
      corr = stats[name].result()
      if corr is None:
        lines.append(f"{name}: never changes in the held-out text, no ranking")
        continue
      order = np.argsort(-np.abs(corr))
      best = int(order[0])
      lines.append(f"{name}: best cells " + ", ".join(
          f"#{int(i)} (r={corr[i]:+.2f})" for i in order[:5]))
      # A passage around the first change of the feature, read from 500
      # characters earlier so the state has warmed up.
      change = int(np.argmax(values != values[0]))
      start = max(change - 300, 0)
      warm = max(start - 500, 0)
      acts = np.concatenate(list(self.cell_activations(params, text[warm:start + 1500])))
      viz.text_heatmap(text[start:start + 1500], acts[start - warm:, best],
                       f"cell {best}, r={corr[best]:+.2f} with '{name}'",
                       os.path.join(out_dir, f"cell_{name}"))
    report = "\n".join(lines)
    storage.write_atomic(os.path.join(out_dir, "cells.txt"), report + "\n")
    return report


class StreamingCorrelation:
  """Pearson r of every cell with a feature, from running sums."""

  def __init__(self):
    self.n = 0
    self.sa = self.saa = self.saf = None
    self.sf = self.sff = 0.0

  def update(self, acts, values):
    if self.sa is None:
      self.sa, self.saa, self.saf = (np.zeros(acts.shape[1]) for _ in range(3))
    self.n += len(values)
    self.sa += acts.sum(0)
    self.saa += (acts ** 2).sum(0)
    self.saf += (acts * values[:, None]).sum(0)
    self.sf += values.sum()
    self.sff += (values ** 2).sum()

  def result(self):
    var_f = self.n * self.sff - self.sf ** 2
    if var_f <= 0:
      return None
    var_a = self.n * self.saa - self.sa ** 2
    return (self.n * self.saf - self.sa * self.sf) / np.sqrt(
        np.maximum(var_a, 1e-12) * var_f)


def text_features(text):
  """Per-character features the paper found cells for."""
  inside_quotes = np.zeros(len(text))
  position_in_line = np.zeros(len(text))
  inside_brackets = np.zeros(len(text))
  quoted = bracket = 0
  col = 0
  for i, c in enumerate(text):
    if c == '"':
      quoted ^= 1
    bracket = 1 if c in "[(" else (0 if c in "])" else bracket)
    inside_quotes[i], inside_brackets[i] = quoted, bracket
    position_in_line[i] = col
    col = 0 if c == "\n" else col + 1
  return {"inside_quotes": inside_quotes, "position_in_line": position_in_line,
          "inside_brackets": inside_brackets}
