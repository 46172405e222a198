"""CLIP: contrastive image-text pretraining (Radford et al. 2021).

An image tower (a ViT) and a text tower (a causal Transformer, features at
the end-of-text token) map a batch of N pairs to normalised embeddings
x_i, y_j (attnlab/models/clip.py). With the learned temperature s =
exp(log_scale), the logits are s x_i . y_j over the WHOLE global batch, and
the loss is symmetric InfoNCE: the mean of the image->text and
text->image cross-entropies, the matching pair the target of each row:

  loss = (CE_rows(s X Y^T, diag) + CE_rows(s Y X^T, diag)) / 2

Every pair of the global batch is a negative of every other, so the loss
is computed over all devices and hosts, three ways that agree in value and
gradient (tested):

  loss_form "global"  the logits of the whole batch in one expression under
                      jit: XLA gathers the rows it needs across devices
  loss_form "local"   under `jax.shard_map` each device gathers the other
                      devices' embeddings and computes its own rows against
                      all columns, image->text and text->image (open_clip's
                      --local-loss --gather-with-grad): [n, N] logits per
                      device instead of [N, N]
  loss_form "per_device"  the ablation: each device's pairs against its own
                      only (n - 1 negatives instead of N - 1)
  loss "sigmoid"      SigLIP (Zhai et al. 2023): -mean over all pairs of
                      log sigmoid(z_ij (s x_i . y_j + b)), z = +1 on the
                      diagonal, -1 off it; with loss_form "local" each device
                      passes its text chunk round the ring of devices
                      (ppermute), one [n, n] block at a time

The temperature is clamped after each update to s <= 100 (log_scale in
[0, log 100], as CLIP's code). Evaluation: zero-shot classification (each
class a mean of prompt embeddings, attnlab/evals/zero_shot.py) and
image<->text recall@1/5/10 on held-out pairs (attnlab/evals/retrieval.py).
"""
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from attnlab import config as config_lib
from attnlab import experiment as experiment_lib
from attnlab import viz
from attnlab.data import catalog, image_ops, images, pairs
from attnlab.data import tokenizer as tok_lib
from attnlab.evals import retrieval, sharded, zero_shot
from attnlab.models import backbone
from attnlab.models import clip as clip_lib

MAX_LOG_SCALE = math.log(100.0)
TEMPLATES = ("{}", "an emoji of {}.", "a picture of {}.", "a drawing of {}.", "an icon of {}.")

# --- the losses ----------------------------------------------------------------


def contrastive_loss(x, y, log_scale):
  """Symmetric InfoNCE of image and text embeddings [N, E] (row i of each
  is a pair). Returns (loss, image->text accuracy of the batch)."""
  logits = jnp.exp(log_scale) * x @ y.T
  labels = jnp.arange(x.shape[0])
  i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  accuracy = jnp.mean(jnp.argmax(logits, 1) == labels)
  return (i2t.mean() + t2i.mean()) / 2, accuracy


def sigmoid_loss(x, y, log_scale, bias):
  """SigLIP: -sum over all N^2 pairs of log sigmoid(z (s x.y + b)) / N."""
  logits = jnp.exp(log_scale) * x @ y.T + bias
  z = 2 * jnp.eye(x.shape[0]) - 1
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / x.shape[0]


def local_contrastive_loss(x, y, log_scale, mesh, axis):
  """contrastive_loss over the global batch, each device computing the
  rows of its own pairs against every device's columns; gradients flow
  back through the gathers (their transpose is a reduce-scatter)."""
  def per_device(x, y, log_scale):
    all_x = jax.lax.all_gather(x, axis, tiled=True)
    all_y = jax.lax.all_gather(y, axis, tiled=True)
    n, total = x.shape[0], all_x.shape[0]
    labels = jax.lax.axis_index(axis) * n + jnp.arange(n)
    s = jnp.exp(log_scale)
    rows = s * x @ all_y.T  # this device's images against every text
    i2t = optax.softmax_cross_entropy_with_integer_labels(rows, labels)
    t2i = optax.softmax_cross_entropy_with_integer_labels(s * y @ all_x.T, labels)
    correct = jnp.sum(jnp.argmax(rows, 1) == labels)
    return (jax.lax.psum(jnp.sum(i2t) + jnp.sum(t2i), axis) / (2 * total),
            jax.lax.psum(correct, axis) / total)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axis), P(axis), P()),
                       out_specs=(P(), P()))(x, y, log_scale)


def per_device_contrastive_loss(x, y, log_scale, mesh, axis):
  """The ablation of global negatives: each device's pairs against its own
  only (no gather; a device of n rows sees n - 1 negatives, not N - 1), the
  mean over devices. Equal to contrastive_loss on one device."""
  def per_device(x, y, log_scale):
    loss, accuracy = contrastive_loss(x, y, log_scale)
    return jax.lax.pmean(loss, axis), jax.lax.pmean(accuracy, axis)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axis), P(axis), P()),
                       out_specs=(P(), P()))(x, y, log_scale)


def local_sigmoid_loss(x, y, log_scale, bias, mesh, axis):
  """sigmoid_loss over the global batch, chunked: each device holds one
  text chunk at a time and passes it to the next device round the ring, so
  no device holds more than [n, n] logits or more than its own texts."""
  names = axis if isinstance(axis, tuple) else (axis,)  # the batch axes
  devices = int(np.prod([mesh.shape[a] for a in names]))

  def per_device(x, y, log_scale, bias):
    me, s, n = jax.lax.axis_index(axis), jnp.exp(log_scale), x.shape[0]
    ring = [(i, (i + 1) % devices) for i in range(devices)]

    def block(k, carry):
      total, chunk = carry
      owner = (me - k) % devices  # whose texts this device holds at turn k
      z = jnp.where(owner == me, 2 * jnp.eye(n) - 1, -jnp.ones((n, n)))
      total = total - jnp.sum(jax.nn.log_sigmoid(z * (s * x @ chunk.T + bias)))
      return total, jax.lax.ppermute(chunk, axis, ring)
    start = jax.lax.pcast(jnp.zeros(()), names, to="varying")  # a sum per device
    total, _ = jax.lax.fori_loop(0, devices, block, (start, y))
    return jax.lax.psum(total, axis) / (n * devices)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axis), P(axis), P(), P()),
                       out_specs=P())(x, y, log_scale, bias)


def _miss(total, positives, k):
  """The chance that k of `total` items drawn at random miss all positives."""
  out = np.ones(np.shape(positives))
  for j in range(k):
    out *= np.clip(total - positives - j, 0, None) / (total - j)
  return out


def recall_chance(captions_per_item, images_per_item, ks=(1, 5, 10)):
  """Expected recall@K of a random ranking, over items of c captions and m
  images each: image->text averages over images, text->image over
  captions, each the chance that one of its positives is among K."""
  c, m = np.asarray(captions_per_item), np.asarray(images_per_item)
  out = {}
  for k in ks:
    out[f"image_to_text/chance@{k}"] = float(np.sum(m * (1 - _miss(c.sum(), c, k))) / m.sum())
    out[f"text_to_image/chance@{k}"] = float(np.sum(c * (1 - _miss(m.sum(), m, k))) / c.sum())
  return out


def group_pairs(captions):
  """Images with the same captions are one retrieval item (an emoji in its
  two art styles: neither caption can tell them apart). Returns (item id of
  each image, the items' captions, each caption's first image)."""
  items, ids = {}, []
  for i, cs in enumerate(captions):
    ids.append(items.setdefault(tuple(cs), len(items)))
  first = {}
  for i, item in enumerate(ids):
    first.setdefault(item, i)
  texts = [(t, first[item]) for cs, item in items.items() for t in cs]
  return np.asarray(ids), [t for t, _ in texts], np.asarray([i for _, i in texts])


def clamp_temperature(params):
  """log_scale into [0, log 100] (CLIP's code clamps it after each step)."""
  return {**params, "log_scale": jnp.clip(params["log_scale"], 0.0, MAX_LOG_SCALE)}


# --- configuration --------------------------------------------------------------


def text_fields(m):
  """The text tower's width, depth, heads and MLP from model.text_variant,
  then explicit overrides (0 keeps the variant's)."""
  if m.text_variant not in clip_lib.TEXT_VARIANTS:
    raise config_lib.ConfigError("model.text_variant", f"{m.text_variant!r} is unknown",
                                 f"use one of {sorted(clip_lib.TEXT_VARIANTS)}")
  width, depth, heads = clip_lib.TEXT_VARIANTS[m.text_variant]
  fields = dict(width=m.text_width or width, depth=m.text_depth or depth,
                num_heads=m.text_heads or heads)
  fields["mlp_dim"] = m.text_mlp_dim or 4 * fields["width"]
  return fields


def make_model(config, vocab_size):
  m = config.model
  image = backbone.make(m, 0)
  text = clip_lib.TextTower(vocab_size, **text_fields(m), context=config.data.context,
                            dropout=m.dropout, implementation=m.implementation,
                            scan=m.scan, remat=m.remat, dtype=jnp.dtype(m.dtype))
  return clip_lib.CLIP(image, text, embed_dim=m.embed_dim, loss=config.clip.loss)


def validate(config):
  """One-line errors before anything compiles."""
  c, m = config, config.model
  for key in ("pp_train", "pp_eval"):
    image_ops.build(c.data[key], f"data.{key}")
  config_lib.check_choice(c, "model.name", {"vit"})
  try:
    fields = backbone.model_fields(m)
  except ValueError as e:
    raise config_lib.ConfigError("model.variant", str(e), "e.g. B/32") from None
  config_lib.check(m.image_size % fields["patch"] == 0, "model.image_size",
                   f"{m.image_size} is not divisible by the patch size {fields['patch']}",
                   "resize the images to a multiple of the patch")
  text = text_fields(m)
  config_lib.check(text["width"] % text["num_heads"] == 0, "model.text_width",
                   f"{text['width']} is not divisible by {text['num_heads']} heads",
                   "use a multiple of model.text_heads")
  config_lib.check_choice(c, "clip.loss", {"softmax", "sigmoid"})
  config_lib.check_choice(c, "clip.loss_form", {"global", "local", "per_device"})
  config_lib.check(c.clip.loss == "softmax" or c.clip.loss_form != "per_device",
                   "clip.loss_form", "per_device negatives are an ablation of the softmax loss",
                   "use clip.loss=softmax, or loss_form global or local")
  config_lib.check(m.embed_dim > 0, "model.embed_dim", f"{m.embed_dim} is not positive",
                   "e.g. 512 (CLIP B/32)")
  # A batch that does not split over the devices (the local loss needs equal
  # rows on each) is refused for every experiment (config.validate_common).


# --- the experiment ---------------------------------------------------------------


class Experiment(experiment_lib.Experiment):
  item_name = "pairs"
  whole_batch = "the contrastive loss takes every other pair of the batch as a negative"
  capabilities = frozenset({"retrieve"})
  validate = staticmethod(validate)

  def __init__(self, config, workdir=None, read_data=True):
    super().__init__(config, workdir)
    data = config.data
    self.context = data.context
    self.classes = pairs.class_names(data) if read_data else []
    # Other labelled image sets classified zero-shot by their class names
    # (fetched and prepared like the training data, once).
    self.zero_shot_sets = {}
    for name in data.get("zero_shot_sets", ()) if read_data else ():
      catalog.prepare(self.zero_shot_data(name))
      self.zero_shot_sets[name] = images.class_names(self.zero_shot_data(name))
    vocab_size = data.vocab_size
    if read_data:
      if data.source == "folder":  # here, not in validate: `compile` reads no data
        pairs.check_folder(data)
      self.tokenizer = tok_lib.for_run(
          workdir, os.path.join(catalog.data_dir(data), "attnlab_spm"),
          f"clip_{data.source}", self._train_captions, data.vocab_size)
      vocab_size = len(self.tokenizer)
      self.check_prompts()
    self.model = make_model(config, vocab_size)
    m = config.model
    self.channels = 3
    self.image_shape = (m.image_size, m.image_size, self.channels)
    self._eval = {}

  def _train_captions(self):
    src = pairs.source(self.config.data, self.config.data.train_split)
    for i in range(len(src)):
      yield from src[i]["captions"]

  def tokenize(self, texts):
    """Texts -> [len(texts), context] ids: each text's pieces, truncated to
    leave room for the end-of-text token, then EOS, then padding."""
    ids = [self.tokenizer.encode(t)[:self.context - 1] + [tok_lib.EOS] for t in texts]
    return tok_lib.pad_batch(ids, self.context)

  def prompts(self, classes=None):
    """[classes x templates] prompt strings of the zero-shot classes (by
    default the source's own)."""
    return [[t.format(name.lower()) for t in TEMPLATES]
            for name in (self.classes if classes is None else classes)]

  def check_prompts(self):
    """Every prompt fits the context with its end-of-text token (a prompt
    cut short would be classified on part of its words)."""
    every = self.prompts() + [p for names in self.zero_shot_sets.values()
                              for p in self.prompts(names)]
    longest = max((p for ps in every for p in ps),
                  key=lambda p: len(self.tokenizer.encode(p)), default=None)
    if longest is not None:
      need = len(self.tokenizer.encode(longest)) + 1
      config_lib.check(need <= self.context, "data.context",
                       f"{self.context} tokens is shorter than the prompt {longest!r} "
                       f"({need} with its end-of-text token)",
                       f"set --config.data.context={need} or more")

  def abstract_batch(self, batch_size):
    return {"image": jax.ShapeDtypeStruct((batch_size, *self.image_shape), jnp.float32),
            "tokens": jax.ShapeDtypeStruct((batch_size, self.context), jnp.int32)}

  # --- what the trainer needs ----------------------------------------------
  def flops_per_step(self, batch_size):
    """Matmul FLOPs of a step, 3x the forward (the backward costs 2x): both
    towers per pair and the [B, B] logits (XLA's count of a scanned tower
    counts one layer)."""
    per_pair = clip_lib.matmul_flops(self.model, self.channels)
    return 3 * (batch_size * per_pair + 2 * batch_size ** 2 * self.model.embed_dim)

  def train_iter(self, local_batch, process_index, process_count):
    c = self.config
    src = pairs.source(c.data, c.data.train_split)
    if jax.process_index() == 0:
      print(f"data: {len(src):,} training images, vocabulary {len(self.tokenizer)}, "
            f"context {self.context}", flush=True)
    return iter(pairs.train_dataset(c, src, self.tokenize, local_batch, process_index,
                                    process_count))

  def init(self, rng, batch_size):
    del batch_size
    x = jnp.zeros((1, *self.image_shape), jnp.float32)
    return {"params": self.model.init(rng, x, jnp.ones((1, self.context), jnp.int32))["params"]}

  def loss(self, params, state, batch, ctx):
    c = self.config.clip
    x, y, temp = self.model.apply({"params": params}, batch["image"], batch["tokens"],
                                  train=True, rngs={"dropout": ctx.rng})
    # The similarities and their softmax in float32, whatever the towers
    # compute in.
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    local = c.loss_form == "local"
    metrics = {"scale": jnp.exp(temp["log_scale"])}
    if c.loss == "sigmoid":
      args = (x, y, temp["log_scale"], temp["bias"])
      loss = (local_sigmoid_loss(*args, ctx.mesh, ctx.batch_axis) if local
              else sigmoid_loss(*args))
      metrics["bias"] = temp["bias"]
    else:
      form = {"global": lambda *a: contrastive_loss(*a),
              "local": lambda *a: local_contrastive_loss(*a, ctx.mesh, ctx.batch_axis),
              "per_device": lambda *a: per_device_contrastive_loss(*a, ctx.mesh,
                                                                   ctx.batch_axis)}
      loss, metrics["batch_accuracy"] = form[c.loss_form](x, y, temp["log_scale"])
    return loss, (metrics, state)

  def post_update(self, params, extra, step):
    del step
    return clamp_temperature(params), extra

  # --- evaluation ------------------------------------------------------------
  def _image_rows(self, params, batch):
    return {"features": self.model.apply({"params": params}, batch["image"],
                                         method=clip_lib.CLIP.encode_image),
            "label": batch["label"]}

  def _text_rows(self, params, batch):
    return {"features": self.model.apply({"params": params}, batch["tokens"],
                                         method=clip_lib.CLIP.encode_text)}

  def eval_images(self, split):
    """(source, its images preprocessed, group_pairs of its captions), read
    once per split: every evaluation and retrieval reuses them."""
    if split not in self._eval:
      src = pairs.source(self.config.data, split)
      groups = group_pairs([src[i]["captions"] for i in range(len(src))])
      self._eval[split] = (src, images.Preprocessed(images.ImagesAndLabels(src),
                                                    self.config.data.pp_eval), groups)
      if jax.process_index() == 0:
        print(f"data: {split} {len(src):,} images, {groups[0].max() + 1:,} retrieval items "
              f"(images of identical captions), {len(groups[1]):,} captions", flush=True)
    return self._eval[split]

  def zero_shot_data(self, name):
    """The data config of a zero-shot set: a tfds name in this data dir."""
    return ml_collections.ConfigDict(dict(source=name, data_dir=self.config.data.data_dir,
                                          folder=""))

  def zero_shot_images(self, name, split):
    """An evenly spaced data.zero_shot_rows of the set's split, through
    data.pp_eval (grey images become RGB there)."""
    key = (name, split)
    if key not in self._eval:
      src = images.source(self.zero_shot_data(name), split)
      rows = min(self.config.data.zero_shot_rows, len(src))
      src = images.Subset(src, np.linspace(0, len(src) - 1, rows).astype(int))
      self._eval[key] = images.Preprocessed(src, self.config.data.pp_eval)
    return self._eval[key]

  def zero_shot(self, params, mesh, features, labels, classes):
    prompts = self.prompts(classes)
    embedded = self.embed_texts(params, [p for ps in prompts for p in ps], mesh)
    embedded = embedded.reshape(len(prompts), len(prompts[0]), -1)
    return zero_shot.zero_shot_accuracy(features, labels, embedded, mesh)

  def embed_texts(self, params, texts, mesh):
    rows = sharded.rows(self._text_rows, params, sharded.batches(
        {"tokens": self.tokenize(texts)},
        sharded.round_to_devices(self.config.eval_batch_size, mesh), mesh))
    return rows["features"]

  def split_metrics(self, state, mesh, split, prefix):
    """Zero-shot accuracy (where the source has classes) and recall@K of
    the split's pairs: every caption of every item (group_pairs)."""
    params = state["params"]
    _, preprocessed, (ids, texts, text_image) = self.eval_images(split)
    batch = sharded.round_to_devices(self.config.eval_batch_size, mesh)
    rows = sharded.rows(self._image_rows, params, sharded.batches(preprocessed, batch, mesh))
    out = {f"{prefix}/{k}": v for k, v in retrieval.retrieval_recall(
        rows["features"], self.embed_texts(params, texts, mesh), text_image, mesh,
        image_ids=ids).items()}
    out.update({f"{prefix}/{k}": v for k, v in recall_chance(
        np.bincount(ids[text_image]), np.bincount(ids)).items()})
    if self.classes:
      for k, v in self.zero_shot(params, mesh, rows["features"], rows["label"],
                                 self.classes).items():
        out[f"{prefix}/zero_shot_{k}"] = v
      out[f"{prefix}/zero_shot_chance"] = 1.0 / len(self.classes)
    test = split == self.config.data.test_split
    for name, classes in self.zero_shot_sets.items():
      got = sharded.rows(self._image_rows, params, sharded.batches(
          self.zero_shot_images(name, "test" if test else "validation"), batch, mesh))
      for k, v in self.zero_shot(params, mesh, got["features"], got["label"],
                                 classes).items():
        out[f"{prefix}/{name}_zero_shot_{k}"] = v
      out[f"{prefix}/{name}_zero_shot_chance"] = 1.0 / len(classes)
    return out

  # --- retrieval from the command line (`./launch.sh retrieve`) -------------
  def retrieve(self, state, mesh, split, text=None, image=None, top=10, folder=None):
    """The split's images nearest a text (their grid as a PNG in `folder`),
    or the split's captions nearest an image (encoded bytes). Returns
    ([(similarity, caption), ...] best first, the PNG's path or None)."""
    params = state["params"]
    src, preprocessed, (_, texts, _) = self.eval_images(split)
    if text is not None:
      unknown = self.tokenizer.unknown_chars(text)
      if unknown:
        print(f"warning: the vocabulary has no piece for {unknown}: read as unknown")
      batch = sharded.round_to_devices(self.config.eval_batch_size, mesh)
      gallery = sharded.rows(self._image_rows, params,
                             sharded.batches(preprocessed, batch, mesh))["features"]
      sims = gallery @ self.embed_texts(params, [text], mesh)[0]
      best = np.argsort(-sims)[:top]
      found = [(float(sims[i]), src[int(i)]["captions"][0]) for i in best]
      slug = "".join(ch if ch.isalnum() else "_" for ch in text.lower())[:40]
      path = os.path.join(folder, f"retrieve_{slug}.png")
      viz.image_grid([images.display(src[int(i)]["image"]) for i in best],
                     [f"{c} ({s:.2f})" for s, c in found], path,
                     title=f"{split} images nearest \"{text}\"")
      return found, path
    pp = image_ops.build(self.config.data.pp_eval, "data.pp_eval")
    query = pp({"image": image}, np.random.default_rng(0))["image"][None]
    x = np.asarray(self.model.apply({"params": params}, jnp.asarray(query),
                                    method=clip_lib.CLIP.encode_image))[0]
    sims = self.embed_texts(params, texts, mesh) @ x
    return [(float(sims[i]), texts[i]) for i in np.argsort(-sims)[:top]], None

  def evaluate(self, state, mesh, step, writer):
    return self.split_metrics(state, mesh, self.config.data.eval_split, "eval")

  def finish(self, state, mesh, writer):
    return self.split_metrics(state, mesh, self.config.data.test_split, "test")
