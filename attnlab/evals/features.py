"""The frozen-feature evaluations and attention maps every vision objective
shares (classification, DINO): preprocessed eval splits, a split's
pre-logits features on every device, DINO's weighted k-NN and the linear
probe on them, and the class token's attention maps of a ViT."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import config as config_lib
from attnlab import experiment as experiment_lib
from attnlab import viz
from attnlab.data import image_ops
from attnlab.data import images
from attnlab.evals import knn, linear_probe
from attnlab.evals import sharded
from attnlab.models import vit
from attnlab.nn import analysis


class ImageFeatures(experiment_lib.Experiment):
  """What the vision experiments share, on a backbone `self.vit` (a ViT or
  ResNet) whose variables in a train state are `feature_variables(state)`:
  preprocessed eval splits, the frozen features of a split (pre-logits,
  every device), the linear probe on them, and attention maps. Needs
  `self.config` (data.pp_eval, data.probe_rows, data.knn_rows, knn_k,
  knn_temperature, linear_probe, eval_batch_size),
  `self.classes` and `self._eval = {}`."""
  capabilities = frozenset({"attend"})

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
      src = images.Subset(src, np.linspace(0, len(src) - 1, limit).astype(int))
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
    rollout = analysis.attention_rollout(weights)[:, 0, 1:].reshape(weights.shape[0], side, -1)
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
