"""Image captioning: Show, Attend and Tell (Xu et al. 2015), a ViT's, ResNet's
or Swin's grid of annotations read word by word by an attending LSTM
(attnlab/models/show_attend_tell.py).

Training is teacher forcing on (image, caption) pairs, one of an image's
captions drawn at random each time it is seen. The objective per caption
(section 4.2.1; eq. 14 for soft attention):

  soft   -log p(y | a) + lambda sum_i (1 - sum_t alpha_ti)^2
  hard   the variational lower bound L_s (section 4.1): for one sampled
         sequence of locations s~ per caption,
         -log p(y | s~, a) + lambda * penalty
         + lambda_r (log p(y | s~, a) / T - b) d log p(s~ | a)   (REINFORCE, eq. 12)
         + lambda_e d H[alpha]                                      (entropy)
         with b a moving average of lambda_r times the reward (extra state),
         the reward per word (T: the caption's words) and lambda_r = 0.1,
         lambda_e = 0.002 as in the authors' code (arctic-captions), and
         the expected context instead of a sample with probability
         `caption.expected_prob` (the paper's 0.5).

Evaluation, on the validation split during training and once on test at
the end: the loss per word of every caption (the soft expectation for
both kinds, as decoding), beam-search captions of every image, their
BLEU-1..4 against all of the image's captions (sacreBLEU, signature
printed), the captions beside their images (plots/ and TensorBoard) and
per-word attention overlays (the paper's Figures 2-3).
"""
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab import checkpoint as ckpt_lib
from attnlab import config as config_lib
from attnlab import decode
from attnlab import experiment as experiment_lib
from attnlab import storage
from attnlab import viz
from attnlab.data import catalog, image_ops, images, pairs
from attnlab.data import tokenizer as tok_lib
from attnlab.evals import bleu, sharded
from attnlab.models import backbone as backbone_lib
from attnlab.models import show_attend_tell as sat
from attnlab.models import vit
from attnlab.nn import analysis
from attnlab.nn import hard

ORDERS = (1, 2, 3, 4)  # BLEU-1..4


def make_model(config, vocab_size):
  m = config.model
  return sat.ShowAttendTell(vocab_size, backbone_lib.make(m, 0), embed=m.embed,
                            hidden=m.hidden, attention_dim=m.attention_dim,
                            attention=config.caption.attention,
                            expected_prob=config.caption.expected_prob,
                            dropout=m.decoder_dropout)


def annotation_shape(config):
  """(L, D): the locations and width of the encoder's annotations at
  model.image_size, from shapes alone (nothing runs or compiles; neither
  depends on the image's channels)."""
  backbone = backbone_lib.make(config.model, 0)
  s = config.model.image_size
  def grid(x):
    (_, aux), _ = backbone.init_with_output(jax.random.PRNGKey(0), x)
    return sat.annotation_grid(backbone, aux)
  shape = jax.eval_shape(grid, jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)).shape
  return shape[1], shape[2]


def validate(config):
  c = config
  for key in ("pp_train", "pp_eval"):
    image_ops.build(c.data[key], f"data.{key}")
  backbone_lib.validate(c)  # an image size the encoder can take
  locations, _ = annotation_shape(c)
  m = c.model
  config_lib.check(locations >= 2, "model.image_size",
                   f"the {m.name} {m.variant} encoder turns {m.image_size} x {m.image_size} "
                   f"images into {locations} location, not a grid to attend over",
                   "use larger images (data.pp_*, model.image_size), smaller patches, or "
                   "a ResNet with small_inputs")
  config_lib.check(round(locations ** 0.5) ** 2 == locations, "model.image_size",
                   f"the encoder's {locations} locations are no square grid",
                   "use square images a whole number of patches wide")
  config_lib.check_choice(c, "data.source", set(pairs.TFDS_PAIRS) | {"folder"})
  config_lib.check_choice(c, "data.tokens", {"word", "sentencepiece"})
  config_lib.check(c.data.max_len >= 2, "data.max_len", f"{c.data.max_len} < 2 tokens",
                   "e.g. 24: the longest caption's words and its end token")
  k = c.caption
  config_lib.check_choice(c, "caption.attention", {"soft", "hard"})
  config_lib.check(0 <= k.expected_prob <= 1, "caption.expected_prob",
                   f"{k.expected_prob} is not a probability", "e.g. 0.5 (Xu et al.)")
  for key in ("penalty", "reward_weight", "entropy_weight"):
    config_lib.check(k[key] >= 0, f"caption.{key}", f"{k[key]} < 0", "use 0 (off) or more")
  config_lib.check(0 <= k.baseline_decay < 1, "caption.baseline_decay",
                   f"{k.baseline_decay} is not in [0, 1)", "e.g. 0.9")
  d = c.decode
  config_lib.check(d.beam >= 1, "decode.beam", f"{d.beam} < 1", "use 1 (greedy) or more")
  config_lib.check(d.max_len >= 1, "decode.max_len", f"{d.max_len} < 1 leaves nothing to "
                   "decode", "e.g. 24 words")
  config_lib.check(d.alpha >= 0, "decode.alpha", f"length penalty {d.alpha} < 0",
                   "use 0 (none) or e.g. 0.6")
  if c.init_from:
    config_lib.check(bool(ckpt_lib.checkpoint_steps(c.init_from)), "init_from",
                     f"{c.init_from} has no checkpoints",
                     "give the --workdir of a classification run of this encoder")


def bleu_scores(hypotheses, references):
  """({"bleuN": BLEU-N over every image, "distinct_bleuN": over the first
  image of each distinct set of captions}, sacreBLEU's signature). The
  second counts each emoji once: its skin tones and art styles share its
  captions, and a family of many variants would otherwise weigh as many
  emoji (corpus BLEU sums n-gram counts over images)."""
  first = {}
  distinct = [i for i, r in enumerate(references) if first.setdefault(tuple(r), i) == i]
  out = {}
  for n in ORDERS:
    out[f"bleu{n}"], signature = bleu.corpus_bleu(hypotheses, references, n, "none")
    out[f"distinct_bleu{n}"], _ = bleu.corpus_bleu([hypotheses[i] for i in distinct],
                                                   [references[i] for i in distinct], n, "none")
  out["distinct_images"] = len(distinct)
  return out, signature


class _CaptionRows:
  """Every (image, caption) pair of a split, for the validation loss: the
  image preprocessed, the caption as tokens."""

  def __init__(self, src, pp, tokenize):
    self.src, self.fn, self.tokenize = src, image_ops.build(pp, "data.pp_eval"), tokenize
    self.index = [(i, j) for i in range(len(src)) for j in range(len(src[i]["captions"]))]

  def __len__(self):
    return len(self.index)

  def __getitem__(self, k):
    i, j = self.index[k]
    pair = self.src[i]
    return {"image": self.fn({"image": pair["image"]}, np.random.default_rng(i))["image"],
            "tokens": self.tokenize([pair["captions"][j]])[0]}


class Experiment(experiment_lib.Experiment):
  item_name = "captions"
  capabilities = frozenset({"caption"})
  validate = staticmethod(validate)

  def __init__(self, config, workdir=None, read_data=True):
    super().__init__(config, workdir)
    data, m = config.data, config.model
    vocab_size = data.vocab_size
    if read_data:
      if data.source == "folder":  # here, not in validate: `compile` reads no data
        pairs.check_folder(data)  # a missing image, an empty caption: one line each
      if data.tokens == "word":
        self.tokenizer = tok_lib.words_for_run(workdir, self._train_captions,
                                               data.vocab_size, data.min_count)
      else:
        self.tokenizer = tok_lib.for_run(
            workdir, os.path.join(catalog.data_dir(data), "attnlab_spm"),
            f"caption_{data.source}", self._train_captions, data.vocab_size)
      vocab_size = len(self.tokenizer)
    self.model = make_model(config, vocab_size)
    self.locations, self.annotation_width = annotation_shape(config)
    self.batch_norm = m.name == "resnet" and m.norm == "batch"
    self.whole_batch = "BatchNorm normalises over the batch" if self.batch_norm else None
    self._eval, self._beams = {}, {}
    # The eval pipeline on a blank image says the channels; one training
    # image through each pipeline, that they make what the model takes.
    blank = {"image": np.full((m.image_size, m.image_size, 3), 255, np.uint8)}
    channels = images.run_pipeline(image_ops.build(data.pp_eval, "data.pp_eval"), blank,
                                   "data.pp_eval")["image"].shape[-1]
    self.image_shape = (m.image_size, m.image_size, channels)
    if not read_data:
      return
    first = {"image": pairs.source(data, data.train_split)[0]["image"]}
    for key in ("pp_eval", "pp_train"):
      got = images.run_pipeline(image_ops.build(data[key], f"data.{key}"), first,
                                f"data.{key}")["image"]
      config_lib.check(got.shape == self.image_shape, f"data.{key}",
                       f"makes {got.shape} images but the model takes {self.image_shape}",
                       "resize to model.image_size in data.pp_train and data.pp_eval")

  # --- text -------------------------------------------------------------------
  def normalise(self, caption):
    return caption.lower() if self.config.data.lowercase else caption

  def _train_captions(self):
    src = pairs.source(self.config.data, self.config.data.train_split)
    for i in range(len(src)):
      yield from (self.normalise(t) for t in src[i]["captions"])

  def tokenize(self, captions):
    """Captions -> [N, data.max_len] target ids: each caption's tokens
    (truncated to leave room), then EOS, then padding."""
    n = self.config.data.max_len
    return tok_lib.pad_batch([self.tokenizer.encode(self.normalise(t))[:n - 1] + [tok_lib.EOS]
                              for t in captions], n)

  # --- what the trainer needs -------------------------------------------------
  def abstract_batch(self, batch_size):
    return {"image": jax.ShapeDtypeStruct((batch_size, *self.image_shape), jnp.float32),
            "tokens": jax.ShapeDtypeStruct((batch_size, self.config.data.max_len), jnp.int32)}

  def flops_per_step(self, batch_size):
    """3x the forward's matmul FLOPs (the backward costs 2x): a ViT
    encoder's and the decoder's words (XLA counts the scan over words
    once). None for other encoders."""
    backbone = self.model.backbone
    if not isinstance(backbone, vit.ViT):
      return None
    per_image = (vit.matmul_flops(backbone, self.image_shape[-1])
                 + sat.decoder_matmul_flops(self.model, self.locations, self.annotation_width,
                                            self.config.data.max_len))
    return 3 * batch_size * per_image

  def train_iter(self, local_batch, process_index, process_count):
    c = self.config
    src = pairs.source(c.data, c.data.train_split)
    if jax.process_index() == 0:
      lengths = [len(self.tokenizer.encode(self.normalise(t)))
                 for i in range(len(src)) for t in src[i]["captions"]]
      long = sum(n > c.data.max_len - 1 for n in lengths)
      held, _, _ = self.split_data(c.data.eval_split)
      print(f"data: {len(src):,} training images, {len(lengths):,} captions, vocabulary "
            f"{len(self.tokenizer):,} ({c.data.tokens}s); {len(held):,} {c.data.eval_split} "
            f"images, {pairs.shared_with_training(src, held)} of them sharing the image or "
            "name of a training pair" + (
                f"; {long} captions ({long / len(lengths):.1%}) are longer than "
                f"data.max_len={c.data.max_len} tokens and are cut" if long else ""),
            flush=True)
    return iter(pairs.train_dataset(c, src, self.tokenize, local_batch, process_index,
                                    process_count))

  def init(self, rng, batch_size):
    del batch_size
    x = jnp.zeros((1, *self.image_shape), jnp.float32)
    variables = self.model.init(rng, x, jnp.ones((1, self.config.data.max_len), jnp.int32))
    out = {"params": variables["params"],
           "model_state": {k: v for k, v in variables.items() if k != "params"}}
    if self.config.caption.attention == "hard":
      out["extra"] = {"baseline": jnp.zeros((), jnp.float32)}  # b of eq. 12
    return out

  def pretrained(self, params, model_state):
    """The encoder's variables from the classification run `init_from`
    (backbone_lib.pretrained); the decoder starts afresh."""
    if not self.config.init_from:
      return params, model_state, None
    inner = {k: v["backbone"] for k, v in model_state.items() if "backbone" in v}
    backbone, inner = backbone_lib.pretrained(self.config, self.model.backbone,
                                                   params["backbone"], inner)
    model_state = {k: dict(v, backbone=inner[k]) if k in inner else v
                   for k, v in model_state.items()}
    return dict(params, backbone=backbone), model_state, self.config.init_from

  def _forward(self, params, model_state, batch, train, rng=None):
    """(per-token NLL [B, T], mask [B, T], aux, model_state) under teacher forcing."""
    tokens = batch["tokens"]
    tokens_in = jnp.concatenate([jnp.full_like(tokens[:, :1], tok_lib.BOS), tokens[:, :-1]], 1)
    variables = {"params": params, **model_state}
    kwargs = {}
    if train and rng is not None:
      dropout, sample = jax.random.split(rng)
      kwargs = dict(rngs={"dropout": dropout},
                    rng=sample if self.config.caption.attention == "hard" else None)
    if train and self.batch_norm:
      (logits, aux), updates = self.model.apply(variables, batch["image"], tokens_in,
                                                train=True, mutable=["batch_stats"], **kwargs)
      model_state = dict(updates)
    else:
      logits, aux = self.model.apply(variables, batch["image"], tokens_in, train=train,
                                     **kwargs)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens)
    return nll, tokens > 0, aux, model_state

  def loss(self, params, state, batch, ctx):
    c = self.config.caption
    nll, mask, aux, model_state = self._forward(params, state["model_state"], batch, True,
                                                ctx.rng)
    caption_nll = jnp.sum(nll * mask, 1)  # -log p(y | a), or | s~, a
    penalty = sat.doubly_stochastic_penalty(aux["attention"], mask)
    loss = jnp.mean(caption_nll) + c.penalty * penalty
    words = jnp.maximum(mask.sum(), 1)
    metrics = {"word_nll": jnp.sum(nll * mask) / words, "penalty": penalty}
    extra = state["extra"]
    if "log_prob" in aux:
      # eq. 12: lambda_r (log p(y|s~,a) - b) d log p(s~|a), the reward a
      # caption's log-likelihood per word (as the authors' code, which also
      # scales it by lambda_r = 1/10); the baseline tracks lambda_r times
      # it. Padding steps neither sample nor count in the entropy's gradient.
      reward = -c.reward_weight * caption_nll / jnp.maximum(mask.sum(1), 1)
      weights = jnp.where(mask[..., None], aux["attention"],
                          jax.lax.stop_gradient(aux["attention"]))
      surrogate, baseline = hard.reinforce_surrogate(
          aux["log_prob"] * mask, reward, extra["baseline"], weights, c.entropy_weight,
          c.baseline_decay)
      # Only its gradient: train/loss stays the captions' NLL + penalty.
      loss = loss + surrogate - jax.lax.stop_gradient(surrogate)
      extra = {"baseline": baseline}
      metrics.update(baseline=baseline, sampled=jnp.sum((aux["log_prob"] != 0) * mask) / words)
    return loss, (metrics, dict(state, model_state=model_state, extra=extra))

  # --- decoding -----------------------------------------------------------------
  def _beam(self, variables, batch, alignments=False):
    """Each image's best beam hypothesis [B, T] (and with `alignments` its
    attention weights [B, T, L])."""
    d = self.config.decode
    params, model_state = variables
    v = {"params": params, **model_state}
    memory = self.model.apply(v, batch["image"], method=self.model.encode)
    state = self.model.apply(v, memory, method=self.model.initial_state)

    def step(state, token, memory):
      state, logits, weights, _ = self.model.apply(v, memory, state, token,
                                                   method=self.model.decode_step)
      return (state, logits, weights) if alignments else (state, logits)
    out = decode.beam_search(step, state, tok_lib.BOS, tok_lib.EOS, d.beam, d.max_len,
                             d.alpha, fixed=memory)
    best = {"tokens": out[0][:, 0]}
    if alignments:
      best["weights"] = out[2][:, 0]
    return best

  def captions(self, state, src, mesh, alignments=False):
    """Beam-search captions of a random-access source of preprocessed
    {"image"} rows, decoded on every device of the mesh: [caption], and
    with `alignments` also [(words, weights [words, L])] with EOS's step."""
    key = (mesh, alignments)
    if key not in self._beams:
      self._beams[key] = sharded.per_device(
          lambda v, b, a=alignments: self._beam(v, b, a), mesh)
    variables = (state["params"], state["model_state"])
    batch = sharded.round_to_devices(self.config.eval_batch_size, mesh)
    out, aligned = [], []
    for rows in sharded.batches(src, batch, mesh):
      best = sharded.gather(self._beams[key], variables, rows)
      for j, seq in enumerate(best["tokens"]):
        out.append(self.tokenizer.decode(seq))
        if alignments:
          seq = list(seq)
          ended = tok_lib.EOS in seq
          n = seq.index(tok_lib.EOS) + 1 if ended else len(seq)
          words = [w.replace("\u2581", "") for w in self.tokenizer.pieces(seq[:n - ended])]
          aligned.append((words + ["<end>"] * ended, best["weights"][j][:n]))
    return (out, aligned) if alignments else out

  # --- evaluation -----------------------------------------------------------------
  def split_data(self, split):
    """(pairs, their images preprocessed, every caption normalised), once."""
    if split not in self._eval:
      src = pairs.source(self.config.data, split)
      refs = [[self.normalise(t) for t in src[i]["captions"]] for i in range(len(src))]
      self._eval[split] = (src, images.Preprocessed(images.ImagesAndLabels(src),
                                                    self.config.data.pp_eval), refs)
    return self._eval[split]

  def _loss_rows(self, variables, batch):
    """Per caption: its NLL, its words, and the entropy of each word's
    attention summed (log L for uniform attention, 0 for one location)."""
    nll, mask, aux, _ = self._forward(*variables, batch, False)
    entropy = analysis.attention_entropy(aux["attention"])
    return {"nll": jnp.sum(nll * mask, 1), "words": jnp.sum(mask, 1),
            "entropy": jnp.sum(entropy * mask, 1)}

  def _split_metrics(self, state, mesh, split, prefix, writer, step):
    src, preprocessed, refs = self.split_data(split)
    batch = sharded.round_to_devices(self.config.eval_batch_size, mesh)
    sums = sharded.sums(self._loss_rows, (state["params"], state["model_state"]),
                        sharded.batches(_CaptionRows(src, self.config.data.pp_eval,
                                                     self.tokenize), batch, mesh))
    words = max(sums["words"], 1)
    out = {f"{prefix}/loss": sums["nll"] / words,
           f"{prefix}/attention_entropy": sums["entropy"] / words,
           f"{prefix}/uniform_entropy": float(np.log(self.locations))}
    hyps = self.captions(state, preprocessed, mesh)
    scores, signature = bleu_scores(hyps, refs)
    out.update({f"{prefix}/{k}": v for k, v in scores.items()})
    if jax.process_index() == 0:
      self._report(src, hyps, refs, out, prefix, signature, f"{split}_step{step}", writer, step)
    return out

  def _report(self, src, hyps, refs, scores, prefix, signature, tag, writer, step):
    """The scores with sacreBLEU's signature, samples as text and as a grid
    of images with their captions."""
    lines = [f"{tag}: " + ", ".join(f"BLEU-{n} {scores[f'{prefix}/bleu{n}']:.2f}"
                                    for n in ORDERS)
             + f" on {len(hyps)} images ({signature}, lowercase={self.config.data.lowercase})", ""]
    shown = np.linspace(0, len(src) - 1, min(self.config.decode.num_samples, len(src)))
    for i in shown.astype(int):
      lines += [f"HYP  {hyps[i]}"] + [f"REF  {r}" for r in refs[i]] + [""]
    text = "\n".join(lines)
    storage.write_atomic(os.path.join(self.workdir, "samples", f"{tag}.txt"), text)
    storage.write_atomic(os.path.join(self.workdir, "samples", f"{tag}_all.tsv"), "".join(
        f"{i}\t{h}\t{r[0]}\n" for i, (h, r) in enumerate(zip(hyps, refs))))
    writer.write_text(step, "samples", text)
    print("\n".join(lines[:8]), flush=True)
    grid = shown[:20].astype(int)
    viz.image_grid([images.display(src[int(i)]["image"]) for i in grid],
                   [textwrap.fill(hyps[i], 24) for i in grid],
                   os.path.join(self.workdir, "plots", f"captions_{tag}.png"), writer, step,
                   title=f"{tag.replace('_', ' ')}: beam-search captions")

  def evaluate(self, state, mesh, step, writer):
    return self._split_metrics(state, mesh, self.config.data.eval_split, "eval", writer, step)

  def finish(self, state, mesh, writer):
    """The test split, once: loss, BLEU-1..4, samples, and per-word
    attention of 4 test images."""
    c, step = self.config, int(state["step"])
    out = self._split_metrics(state, mesh, c.data.test_split, "test", writer, step)
    src, _, _ = self.split_data(c.data.test_split)
    out["test/shared_with_training"] = pairs.shared_with_training(
        pairs.source(c.data, c.data.train_split), src)
    shown = np.linspace(0, len(src) - 1, min(4, len(src))).astype(int)
    self.caption_images(state, [(f"test_{i}", src[int(i)]["image"]) for i in shown],
                        os.path.join(self.workdir, "plots"), mesh, writer, step)
    return out

  def baselines(self, split):
    """BLEU-1..4 on a split of two captioners that look at no attention:
    the most frequent training caption for every image, and the first
    caption of the nearest training image (Euclidean, in the eval
    pipeline's pixels). Returns {name: [BLEU-1, ..., BLEU-4]}."""
    train, train_images, train_refs = self.split_data(self.config.data.train_split)
    _, held_images, refs = self.split_data(split)
    pixels = lambda src: np.stack([src[i]["image"].ravel() for i in range(len(src))])
    x, y = pixels(train_images), pixels(held_images)
    nearest = np.argmin((y ** 2).sum(1)[:, None] - 2 * y @ x.T + (x ** 2).sum(1)[None], 1)
    counts = {}
    for captions in train_refs:
      for t in captions:
        counts[t] = counts.get(t, 0) + 1
    frequent = max(sorted(counts), key=counts.get)
    guesses = {f"most frequent training caption ({frequent!r})": [frequent] * len(refs),
               "nearest training image's first caption": [train_refs[i][0] for i in nearest]}
    return {name: bleu_scores(hyps, refs)[0] for name, hyps in guesses.items()}

  # --- your images (`./launch.sh caption WORKDIR IMAGE...`) ----------------------
  def caption_images(self, state, pictures, folder, mesh, writer=None, step=0):
    """[(name, encoded image)] -> [(name, caption, overlay PNG)]: each image
    resized and centre-cropped to the model's size, then the eval
    pipeline; its beam-search caption, and the attention of every word
    over the image (Xu et al., Figures 2-3) as folder/caption_NAME.png."""
    pp, fit = image_ops.for_any_image(self.config.data.pp_eval, self.config.model.image_size)
    rows = [pp({"image": encoded}, np.random.default_rng(0)) for _, encoded in pictures]
    texts, aligned = self.captions(state, rows, mesh, alignments=True)
    out = []
    for (name, encoded), text, (words, weights) in zip(pictures, texts, aligned):
      shown = fit({"image": images.display(encoded)}, None)["image"]
      side = int(round(weights.shape[-1] ** 0.5))
      base = os.path.splitext(os.path.basename(name))[0]
      path = os.path.join(folder, f"caption_{base}.png")
      if jax.process_index() == 0:
        viz.attention_maps(shown, weights.reshape(len(words), side, side), words, path,
                           writer, step, title=f"{os.path.basename(name)}: \"{text}\" "
                           f"({self.config.caption.attention} attention; one colour "
                           "scale for all words)", cols=6, vmax=float(weights.max()))
      out.append((name, text, path))
    return out

