"""Image classification: ViT, ResNet (with non-local blocks or local
self-attention) or Swin (`config.model.name`) trained with labels, from
scratch or fine-tuned from another run.

Loss: softmax cross-entropy with label smoothing (`config.label_smoothing`),
or `config.loss="sigmoid"` (a binary cross-entropy per class, as big_vision
pretrains); mixup (`config.data.mixup`, its alpha) mixes images and labels
of a batch. Evaluation on `data.eval_split` during training and once on
`data.test_split` after it: top-1 and top-5 accuracy and loss; at the end
also per-class accuracy, a confusion matrix and a grid of test images with
the model's guesses (plots/ and TensorBoard).

Fine-tuning (`config.init_from` = another run's workdir): every parameter of
the same architecture is taken, the head is new (another task may have
other classes), and position embeddings are resized in 2-D when the image
size differs (`vit.resize_posemb`).

Linear probe (`config.linear_probe`) and k-NN (`config.knn_k` > 0): at each
evaluation, a logistic regression on the frozen backbone's pre-logits
features of the training images (attnlab/evals/linear_probe.py, L-BFGS),
its L2 penalty chosen on the validation split, and DINO's weighted k-NN
vote of those training features (attnlab/evals/knn.py); at the end, both
on test. With init_from and the backbone frozen (configs/vit.py's
`probe=True`) they measure how good another run's features are for this
task.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab import checkpoint as ckpt_lib
from attnlab import config as config_lib
from attnlab import viz
from attnlab.data import image_ops
from attnlab.data import images
from attnlab.evals import knn, linear_probe
from attnlab.evals import sharded
from attnlab.models import resnet
from attnlab.models import swin
from attnlab.models import vit
from attnlab.nn import attention as att

HEAD = "head"  # the parameters a fine-tuned run starts afresh


def model_fields(m):
  """ViT's fields from config.model: the variant string, then explicit
  overrides (0 keeps the variant's value; for small embedded models)."""
  fields = vit.parse_variant(m.variant)
  fields.update({k: m[k] for k in ("width", "depth", "mlp_dim", "num_heads") if m.get(k)})
  return fields


def swin_fields(m):
  """Swin's fields from config.model: the variant string ("T"), then
  overrides (0 or () keeps the variant's value)."""
  fields = swin.parse_variant(m.variant)
  fields.update({k: tuple(m[k]) if k != "width" else m[k]
                 for k in ("width", "depths", "num_heads") if m.get(k)})
  return fields


def make_model(m, num_classes):
  """The backbone of config.model with a head of `num_classes` (0: none)."""
  if m.name == "resnet":
    return resnet.ResNet(num_classes, depth=resnet.parse_variant(m.variant),
                         width=m.width or 64, norm=m.norm, small_inputs=m.small_inputs,
                         nonlocal_stages=tuple(m.get("nonlocal_stages", ())),
                         spatial=m.get("spatial", "conv"),
                         local_kernel=m.get("local_kernel", 7),
                         local_heads=m.get("local_heads", 8), dtype=jnp.dtype(m.dtype))
  if m.name == "swin":
    return swin.Swin(num_classes, **swin_fields(m), patch=m.patch, window=m.window,
                     drop_path=m.drop_path, implementation=m.implementation,
                     dtype=jnp.dtype(m.dtype))
  return vit.ViT(
      num_classes=num_classes, **model_fields(m), image_size=m.image_size, pool=m.pool,
      posemb=m.posemb, representation_size=m.representation_size, dropout=m.dropout,
      attention_dropout=m.attention_dropout, implementation=m.implementation,
      scan=m.scan, remat=m.remat, drop_path=m.drop_path, head_bias=m.head_bias,
      dtype=jnp.dtype(m.dtype))


def validate(config):
  images.validate(config.data)
  validate_backbone(config)
  config_lib.check_choice(config, "loss", {"softmax", "sigmoid"})
  config_lib.check(0 <= config.label_smoothing < 1, "label_smoothing",
                   f"{config.label_smoothing} is not in [0, 1)", "e.g. 0.1")
  config_lib.check(config.data.mixup >= 0, "data.mixup", f"{config.data.mixup} < 0",
                   "use 0 (off) or an alpha such as 0.2")
  if config.init_from:
    config_lib.check(bool(ckpt_lib.checkpoint_steps(config.init_from)),
                     "init_from", f"{config.init_from} has no checkpoints",
                     "give the --workdir of a finished classification run")


def validate_backbone(config):
  """config.model of a ViT, ResNet or Swin (for every vision experiment):
  the variant, its sizes, and an image size the model can take."""
  m = config.model
  config_lib.check_choice(config, "model.name", {"vit", "resnet", "swin"})
  if m.name == "resnet":
    try:
      depth = resnet.parse_variant(m.variant)
    except ValueError as e:
      raise config_lib.ConfigError("model.variant", str(e), "e.g. --config.model.variant=50")
    config_lib.check_choice(config, "model.norm", {"batch", "group"})
    stages = len(resnet.DEPTHS[depth][1])
    bad = [s for s in m.get("nonlocal_stages", ()) if not 1 <= s <= stages]
    config_lib.check(not bad, "model.nonlocal_stages",
                     f"stage {bad[0] if bad else ''} is out of range: ResNet-{depth} has "
                     f"stages 1-{stages}", "e.g. --config.model.nonlocal_stages=(2,3)")
    if "spatial" in m:  # (runs from before attention in ResNets have no such key)
      config_lib.check_choice(config, "model.spatial", {"conv", "local"})
    if m.get("spatial") == "local":
      config_lib.check(m.local_kernel % 2 == 1 and m.local_kernel > 0, "model.local_kernel",
                       f"{m.local_kernel} is not odd: a neighbourhood needs a centre pixel",
                       "e.g. 7 (the 7 x 7 of Ramachandran et al. and Hu et al.)")
      config_lib.check(m.local_heads > 0 and (m.width or 64) % m.local_heads == 0,
                       "model.local_heads", f"{m.local_heads} heads do not divide the "
                       f"first stage's {m.width or 64} channels", "use a divisor of model.width")
  elif m.name == "swin":
    try:
      fields = swin_fields(m)
    except ValueError as e:
      raise config_lib.ConfigError("model.variant", str(e), "e.g. --config.model.variant=T")
    config_lib.check(len(fields["depths"]) == len(fields["num_heads"]), "model.num_heads",
                     f"{len(fields['num_heads'])} stages of heads for "
                     f"{len(fields['depths'])} stages of blocks", "give one per stage")
    problem = swin.check_sizes(m.image_size, m.patch, m.window, len(fields["depths"]))
    config_lib.check(problem is None, "model.image_size", problem,
                     "resize the images (data.pp_*) or change model.window / model.patch")
    config_lib.check(0 <= m.drop_path < 1, "model.drop_path", f"{m.drop_path} is not in [0, 1)",
                     "e.g. 0.2 (Swin-T's rate at the last block)")
  else:
    try:
      fields = model_fields(m)
    except ValueError as e:
      raise config_lib.ConfigError("model.variant", str(e), "e.g. --config.model.variant=S/16")
    config_lib.check(m.image_size % fields["patch"] == 0, "model.image_size",
                     f"{m.image_size} is not divisible by the patch size {fields['patch']}",
                     "resize the images (data.pp_*) to a multiple of the patch, or change "
                     "the variant's patch")
    config_lib.check(fields["width"] % fields["num_heads"] == 0, "model.width",
                     f"{fields['width']} is not divisible by {fields['num_heads']} heads",
                     "use a multiple of model.num_heads")
    config_lib.check_choice(config, "model.pool", {"tok", "gap"})
    config_lib.check_choice(config, "model.posemb", {"learn", "sincos2d"})
    config_lib.check(0 <= m.drop_path < 1, "model.drop_path", f"{m.drop_path} is not in [0, 1)",
                     "e.g. 0.1 (the rate of the last layer; 0 at the first)")


def pretrained_backbone(config, model, params, model_state):
  """`params` and `model_state` of a backbone `model` with every variable
  but the head taken from the run `config.init_from` (a classification run
  of the same architecture), position embeddings resized to this run's
  grid (vit.resize_posemb). A one-line ConfigError for another architecture."""
  source = config.init_from
  loaded, loaded_state = ckpt_lib.load_variables(source)
  loaded = {k: v for k, v in loaded.items() if k != HEAD}
  if "pos_embedding" in loaded and "pos_embedding" in params:
    side = config.model.image_size // model.patch
    prefix = 1 if model.pool == "tok" else 0
    tokens = loaded["pos_embedding"].shape[1]
    old_side = int(round(np.sqrt(max(tokens - prefix, 0))))
    config_lib.check(
        old_side * old_side == tokens - prefix, "init_from",
        f"{source}'s {tokens} position embeddings are not {prefix} class token(s) + a "
        f"square grid, so they cannot be interpolated to {side} x {side}",
        "fine-tune with the pretrained run's model.pool (tok: a class token; gap: none)")
    loaded["pos_embedding"] = vit.resize_posemb(loaded["pos_embedding"], (side, side), prefix)
  mine = {k: v for k, v in params.items() if k != HEAD}
  shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), t)
  if shapes(mine) != shapes(loaded):
    raise config_lib.ConfigError(
        "init_from", f"{source} holds another architecture than model.variant="
        f"{config.model.variant}", "start from a run with this run's model.* keys")
  if jax.tree.structure(loaded_state) == jax.tree.structure(model_state):
    model_state = loaded_state
  return {**params, **loaded}, model_state


class ImageFeatures:
  """What the vision experiments share, on a backbone `self.vit` (a ViT or
  ResNet) whose variables in a train state are `feature_variables(state)`:
  preprocessed eval splits, the frozen features of a split (pre-logits,
  every device), the linear probe on them, and attention maps. Needs
  `self.config` (data.pp_eval, data.probe_rows, data.knn_rows, knn_k,
  knn_temperature, linear_probe, eval_batch_size),
  `self.classes` and `self._eval = {}`."""

  def eval_source(self, split):
    if split not in self._eval:
      self._eval[split] = images.Preprocessed(images.source(self.config.data, split),
                                              self.config.data.pp_eval)
    return self._eval[split]

  def _features(self, variables, batch):
    """Per row of a batch: {"features", "label"}."""
    raise NotImplementedError

  def split_features(self, state, mesh, split, limit=0):
    src = self.eval_source(split)
    if limit and len(src) > limit:  # an evenly spaced subset of a large split
      src = _Subset(src, np.linspace(0, len(src) - 1, limit).astype(int))
    rows = sharded.rows(self._features, self.feature_variables(state),
                        sharded.batches(src, sharded.round_to_devices(
                            self.config.eval_batch_size, mesh), mesh))
    return rows["features"], rows["label"]

  def probe(self, features, mesh, test=False):
    """The linear probe: fitted on the training split's features (eval
    preprocessing, at most data.probe_rows of them; `features(split,
    limit)` gives them), L2 chosen on validation. Returns ({split:
    accuracy}, chosen l2, the probe)."""
    c = self.config
    train = features(c.data.train_split, c.data.probe_rows)
    validation = features(c.data.eval_split)
    probe, l2, scores = linear_probe.select(train, validation, len(self.classes), mesh)
    out = {"validation": scores[l2]}
    if test:
      out["test"] = linear_probe.accuracy(probe, *features(c.data.test_split))
    return out, l2, probe

  def check_knn(self, train_images):
    """k against the k-NN bank (at most data.knn_rows training images)."""
    c = self.config
    bank = min(c.data.knn_rows, train_images)
    config_lib.check(c.knn_k >= 0, "knn_k", f"k = {c.knn_k} is negative",
                     "20 as DINO, or 0 for no k-NN evaluation")
    config_lib.check(c.knn_k <= bank, "knn_k", f"k = {c.knn_k} is larger than the k-NN "
                     f"bank of {bank} training images", "use a smaller k or more training images")

  def feature_evals(self, state, mesh, prefix, test=False, probe=None):
    """The frozen features' weighted k-NN accuracy (config.knn_k > 0; the
    bank: at most data.knn_rows training images) and linear-probe accuracy
    (`probe`, by default config.linear_probe) on validation, or on test.
    Each split's features are computed once."""
    c, out = self.config, {}
    probe = c.linear_probe if probe is None else probe
    cache = {}

    def features(split, limit=0):
      if (split, limit) not in cache:
        cache[split, limit] = self.split_features(state, mesh, split, limit)
      return cache[split, limit]
    split = c.data.test_split if test else c.data.eval_split
    if c.knn_k:
      out[f"{prefix}/knn_accuracy"] = float(knn.knn_accuracy(
          *features(c.data.train_split, c.data.knn_rows), *features(split), mesh,
          len(self.classes), c.knn_k, c.knn_temperature))
    if probe:
      scores, l2, _ = self.probe(features, mesh, test)
      out.update({f"{prefix}/probe_accuracy": scores["test" if test else "validation"],
                  f"{prefix}/probe_l2": l2})
      if test:
        out["test/probe_validation_accuracy"] = scores["validation"]
    return out

  # --- attention maps -------------------------------------------------------
  def has_maps(self):
    return isinstance(self.vit, vit.ViT) and self.vit.pool == "tok"

  def attention(self, params, images_):
    """Per image [B, H, W, C] (preprocessed): the last layer's class-token
    attention to each patch, per head [B, heads, h, w], and the attention
    rollout of the class token over all layers [B, h, w]."""
    if not self.has_maps():
      raise ValueError("attention maps need a ViT with a class token "
                       f"(this run's model is {self.config.model.name}, pool "
                       f"{self.config.model.get('pool')})")
    _, aux = self.vit.apply({"params": params}, images_, return_weights=True)
    weights = aux["attention"]  # [B, layers, heads, T, T]
    side = images_.shape[1] // self.vit.patch
    last = weights[:, -1, :, 0, 1:].reshape(weights.shape[0], weights.shape[2], side, -1)
    rollout = att.attention_rollout(weights)[:, 0, 1:].reshape(weights.shape[0], side, -1)
    return last, rollout

  def guess(self, state, image):
    """A caption for an attention figure (the class guessed), or ""."""
    return ""

  def attend(self, state, pictures, folder, writer=None, step=0):
    """Attention maps of `pictures` ([(name, encoded image)]) as PNGs in
    `folder`: each image resized and centre-cropped to the model's size,
    then the eval pipeline; returns the paths written."""
    pp, fit = image_ops.for_any_image(self.config.data.pp_eval, self.config.model.image_size)
    fn = jax.jit(self.attention)
    params = self.attention_params(state)
    paths = []
    for name, encoded in pictures:
      image = jnp.asarray(pp({"image": encoded}, np.random.default_rng(0))["image"][None])
      last, rollout = (np.asarray(a[0]) for a in fn(params, image))
      guess = self.guess(state, image)
      shown = fit({"image": images.display(encoded)}, None)["image"]
      path = os.path.join(folder, f"attention_{os.path.splitext(os.path.basename(name))[0]}.png")
      viz.attention_maps(shown, [*last, rollout],
                         [f"head {h + 1}, last layer" for h in range(len(last))] + ["rollout"],
                         path, writer, step, title=f"{os.path.basename(name)}: class-token "
                         "attention" + (f" (guess: {guess})" if guess else ""))
      paths.append(path)
    return paths

  def test_maps(self, state, writer):
    """Attention maps of 4 test images, evenly spaced, into plots/."""
    if not self.has_maps():
      return
    src = self.eval_source(self.config.data.test_split).src
    shown = np.linspace(0, len(src) - 1, min(4, len(src))).astype(int)
    self.attend(jax.device_get(state), [(f"test_{i}", src[int(i)]["image"]) for i in shown],
                os.path.join(self.workdir, "plots"), writer, int(state["step"]))


class Experiment(ImageFeatures):
  item_name = "images"

  def __init__(self, config, workdir=None, read_data=True):
    """read_data=False (`./launch.sh compile`): classes and channels from
    the dataset's tfds description, no image read."""
    self.config, self.workdir = config, workdir
    data = config.data
    # A source that is not a registered tfds dataset here (imagenet21k)
    # gives its class count in the config, for compile.
    self.classes = (images.class_names(data) if read_data or not data.get("num_classes")
                    else [str(i) for i in range(data.num_classes)])
    m = config.model
    self.model = self.vit = make_model(m, len(self.classes))
    # BatchNorm statistics are the model's state; its loss needs the batch whole.
    self.batch_norm = m.name == "resnet" and m.norm == "batch"
    self.whole_batch = "BatchNorm normalises over the batch" if self.batch_norm else None
    self._eval = {}
    if not read_data:  # the eval pp run on one blank image says the channels
      blank = {"image": np.full((m.image_size, m.image_size, 3), 255, np.uint8)}
      self.channels = images.run_pipeline(image_ops.build(data.pp_eval, "data.pp_eval"),
                                          blank, "data.pp_eval")["image"].shape[-1]
      return
    # One preprocessed eval image says the shape the model is built for.
    example = self.eval_source(data.eval_split)[0]["image"]
    config_lib.check(example.shape[:2] == (m.image_size, m.image_size), "data.pp_eval",
                     f"makes {example.shape[0]} x {example.shape[1]} images but "
                     f"model.image_size is {m.image_size}",
                     "resize to model.image_size in data.pp_train and data.pp_eval")
    self.channels = example.shape[-1]
    # And one training image, so that a bad pp_train stops here, not mid-run.
    src = images.source(data, data.train_split)
    self.check_knn(len(src))
    train = images.run_pipeline(image_ops.build(data.pp_train, "data.pp_train"), src[0],
                                "data.pp_train")["image"]
    config_lib.check(train.shape == example.shape, "data.pp_train",
                     f"makes {train.shape} images but data.pp_eval makes {example.shape}",
                     "end both pipelines at model.image_size with the same channels")

  def abstract_batch(self, batch_size):
    s = self.config.model.image_size
    return {"image": jax.ShapeDtypeStruct((batch_size, s, s, self.channels), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  # --- what the trainer needs --------------------------------------------
  def items_per_step(self, batch_size):
    return batch_size

  def flops_per_step(self, batch_size):
    """ViT's matmul FLOPs of a train step, 3x the forward (the backward
    costs 2x): XLA's count of a scanned encoder counts one layer. None for
    ResNet (never scanned: XLA's count stands)."""
    if self.config.model.name != "vit":
      return None
    return 3 * batch_size * vit.matmul_flops(self.model, self.channels)

  def train_iter(self, local_batch, process_index, process_count):
    c = self.config
    src = images.source(c.data, c.data.train_split)
    if jax.process_index() == 0:
      print(f"data: {len(src):,} training images, {len(self.classes)} classes, "
            f"{len(self.eval_source(c.data.eval_split)):,} {c.data.eval_split} images",
            flush=True)
    return iter(images.train_dataset(
        src, c.data.pp_train, local_batch, process_index, process_count, c.total_steps,
        c.batch_size, c.seed, mixup=c.data.mixup, num_classes=len(self.classes),
        workers=c.data.workers))

  def init(self, rng, batch_size):
    s = self.config.model.image_size
    x = jnp.zeros((batch_size, s, s, self.channels), jnp.float32)
    variables = self.model.init(rng, x)
    return {"params": variables["params"],
            "model_state": {k: v for k, v in variables.items() if k != "params"}}

  def _apply(self, params, state, images, train, rng=None):
    """(logits, aux, new model_state): BatchNorm statistics are used in
    evaluation and updated (from this global batch) in training."""
    variables = {"params": params, **state["model_state"]}
    rngs = {"dropout": rng} if train and rng is not None else {}
    # Logits in float32 whatever the model computes in (model.dtype): the
    # loss and its softmax or sigmoid are not bfloat16's business.
    if train and self.batch_norm:
      (logits, aux), updates = self.model.apply(variables, images, train=True, rngs=rngs,
                                                mutable=["batch_stats"])
      return logits.astype(jnp.float32), aux, dict(updates)
    logits, aux = self.model.apply(variables, images, train=train, rngs=rngs)
    return logits.astype(jnp.float32), aux, state["model_state"]

  def pretrained(self, params, model_state):
    """Every parameter but the head (and BatchNorm's statistics) from
    `init_from` (pretrained_backbone)."""
    if not self.config.init_from:
      return params, model_state, None
    params, model_state = pretrained_backbone(self.config, self.model, params, model_state)
    return params, model_state, self.config.init_from

  def _targets(self, labels, num_classes):
    """Integer labels or mixup's soft labels -> smoothed target distributions."""
    if labels.ndim == 1:
      labels = jax.nn.one_hot(labels, num_classes)
    return optax.smooth_labels(labels, self.config.label_smoothing)

  def _nll(self, logits, labels):
    targets = self._targets(labels, logits.shape[-1])
    if self.config.loss == "sigmoid":
      return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
    return optax.softmax_cross_entropy(logits, targets)

  def loss(self, params, state, batch, ctx):
    logits, _, model_state = self._apply(params, state, batch["image"], True, ctx.rng)
    labels = batch["label"]
    hard = labels if labels.ndim == 1 else labels.argmax(-1)
    return self._nll(logits, labels).mean(), (
        {"accuracy": jnp.mean(logits.argmax(-1) == hard)},
        dict(state, model_state=model_state))

  # --- evaluation ---------------------------------------------------------
  def _eval_rows(self, variables, batch):
    params, model_state = variables
    logits, _, _ = self._apply(params, {"model_state": model_state}, batch["image"], False)
    label = batch["label"]
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    # Eval loss is the plain likelihood of the true label (no label smoothing,
    # no mixup) so runs trained with different smoothing compare on one scale.
    return {"nll": optax.softmax_cross_entropy_with_integer_labels(logits, label)
            if self.config.loss == "softmax" else self._nll(logits, label),
            "top1": (top5[:, 0] == label).astype(jnp.float32),
            "top5": jnp.any(top5 == label[:, None], -1).astype(jnp.float32),
            "prediction": top5[:, 0], "label": label}

  def _evaluate(self, state, mesh, split, prefix, report, writer=None, step=0):
    src = self.eval_source(split)
    rows = sharded.rows(self._eval_rows, (state["params"], state["model_state"]), sharded.batches(
        src, sharded.round_to_devices(self.config.eval_batch_size, mesh), mesh))
    results = {f"{prefix}/loss": float(rows["nll"].mean()),
               f"{prefix}/accuracy": float(rows["top1"].mean()),
               f"{prefix}/top5": float(rows["top5"].mean())}
    if report and jax.process_index() == 0:
      self._report(rows, src, f"{split}_step{step}", writer, step)
    return results

  def evaluate(self, state, mesh, step, writer):
    results = self._evaluate(state, mesh, self.config.data.eval_split, "eval", False)
    return {**results, **self.feature_evals(state, mesh, "eval")}

  def feature_variables(self, state):
    return state["params"], state["model_state"]

  def _features(self, variables, batch):
    params, model_state = variables
    _, aux, _ = self._apply(params, {"model_state": model_state}, batch["image"], False)
    return {"features": aux["pre_logits"], "label": batch["label"]}

  def finish(self, state, mesh, writer):
    """The test split, once: accuracy, per-class accuracy, confusion matrix
    and sample predictions."""
    results = self._evaluate(state, mesh, self.config.data.test_split, "test", True,
                             writer, int(state["step"]))
    results.update(self.feature_evals(state, mesh, "test", test=True))
    if jax.process_index() == 0:
      self.test_maps(state, writer)
    return results

  def attention_params(self, state):
    return state["params"]

  def guess(self, state, image):
    logits, _ = self.model.apply({"params": state["params"]}, image)
    return self.classes[int(np.argmax(logits[0]))]

  def _report(self, rows, src, tag, writer, step):
    k = len(self.classes)
    counts = np.zeros((k, k), int)
    np.add.at(counts, (rows["label"], rows["prediction"]), 1)
    per_class = counts.diagonal() / np.maximum(counts.sum(1), 1)
    for name, acc, n in zip(self.classes, per_class, counts.sum(1)):
      print(f"  {name:<20} accuracy {100 * acc:5.1f}% over {n} images", flush=True)
    plots = os.path.join(self.workdir, "plots")
    viz.confusion(counts, self.classes, os.path.join(plots, f"confusion_{tag}.png"),
                  writer, step, title=f"{tag.replace('_', ' ')}")
    shown = np.linspace(0, len(src) - 1, min(25, len(src))).astype(int)
    viz.image_grid([images.display(src.src[i]["image"]) for i in shown],
                   [f"{self.classes[rows['prediction'][i]]}"
                    + ("" if rows["prediction"][i] == rows["label"][i]
                       else f" ({self.classes[rows['label'][i]]})") for i in shown],
                   os.path.join(plots, f"predictions_{tag}.png"), writer, step,
                   title="guess (true class where wrong)")


class _Subset:
  """Rows `index` of a random-access source."""

  def __init__(self, src, index):
    self.src, self.index = src, index

  def __len__(self):
    return len(self.index)

  def __getitem__(self, i):
    return self.src[int(self.index[i])]
