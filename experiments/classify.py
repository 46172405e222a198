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
from attnlab.evals import features
from attnlab.evals import sharded
from attnlab.models import backbone
from attnlab.models import vit


def validate(config):
  images.validate(config.data)
  backbone.validate(config)
  config_lib.check_choice(config, "loss", {"softmax", "sigmoid"})
  config_lib.check(0 <= config.label_smoothing < 1, "label_smoothing",
                   f"{config.label_smoothing} is not in [0, 1)", "e.g. 0.1")
  config_lib.check(config.data.mixup >= 0, "data.mixup", f"{config.data.mixup} < 0",
                   "use 0 (off) or an alpha such as 0.2")
  if config.init_from:
    config_lib.check(bool(ckpt_lib.checkpoint_steps(config.init_from)),
                     "init_from", f"{config.init_from} has no checkpoints",
                     "give the --workdir of a finished classification run")


class Experiment(features.ImageFeatures):
  item_name = "images"
  validate = staticmethod(validate)

  def __init__(self, config, workdir=None, read_data=True):
    """read_data=False (`./launch.sh compile`): classes and channels from
    the dataset's tfds description, no image read."""
    super().__init__(config, workdir)
    data = config.data
    # A source that is not a registered tfds dataset here (imagenet21k)
    # gives its class count in the config, for compile.
    self.classes = (images.class_names(data) if read_data or not data.get("num_classes")
                    else [str(i) for i in range(data.num_classes)])
    m = config.model
    self.model = self.vit = backbone.make(m, len(self.classes))
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
    `init_from` (backbone.pretrained)."""
    if not self.config.init_from:
      return params, model_state, None
    params, model_state = backbone.pretrained(self.config, self.model, params, model_state)
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
