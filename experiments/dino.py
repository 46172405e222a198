"""DINO: self-distillation with no labels (Caron et al. 2021).

A student ViT + projection head (attnlab/models/dino_head.py) sees every
view of an image: 2 global crops and N local ones at a smaller resolution
(the ViT interpolates its position embeddings to each). A teacher of the
same architecture sees the global crops only; it is not trained but is the
exponential moving average of the student after each update (the trainer's
`post_update`), with a momentum rising from 0.996 to 1 on a cosine. The
loss is the cross-entropy between the teacher's centred, sharpened output
distribution and the student's, over every pair of different views:

  P_t = softmax((g_t(x) - c) / tau_t),  P_s = softmax(g_s(x') / tau_s),
  loss = mean over pairs (x global, x' any other view) of -P_t . log P_s

The centre c is the running mean (momentum 0.9) of the teacher's outputs
over the GLOBAL batch: every device's and host's rows (a mean over a batch
that jit shards across the mesh is the global mean). tau_t warms up from
0.04 to 0.07, tau_s is 0.1. Centring keeps one dimension from dominating,
sharpening keeps the output from going uniform: without centring the
teacher collapses to one dimension (its entropy goes to 0), which the
monitors logged every step show (teacher entropy, teacher-student KL,
centre norm).

Labels are never seen in training. Evaluation: weighted k-NN (k = 20,
T = 0.07) of the teacher's class-token features against the training
images' (attnlab/evals/knn.py), on validation during training and once on
test at the end, where a linear probe (attnlab/evals/linear_probe.py) and
the teacher's last-layer class-token attention maps of test images are
added; `./launch.sh attend` draws them for any image.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab import config as config_lib
from attnlab.data import image_ops, images
from attnlab.evals import features
from attnlab.models import backbone, dino_head, vit

# --- the method's formulas -------------------------------------------------


def cosine(start, end, step, total):
  """From `start` at step 0 to `end` at `total` on a half cosine (DINO's
  schedule of the teacher momentum)."""
  return end + (start - end) * optax.cosine_decay_schedule(1.0, max(total, 1))(step)


def teacher_temperature(step, warmup_steps, start, end):
  """Linear warm-up of the teacher's temperature, then constant."""
  if warmup_steps <= 0:
    return jnp.asarray(end, jnp.float32)
  return optax.linear_schedule(start, end, max(round(warmup_steps), 1))(step)


def dino_loss(student, teacher, center, student_temp, teacher_temp):
  """student [V, B, K] (the 2 global views first), teacher [2, B, K].
  Returns (loss, monitors): the mean over the 2 x (V - 1) pairs of
  different views of the cross-entropy H(P_t, P_s), averaged over rows."""
  p_t = jax.nn.softmax(jax.lax.stop_gradient(teacher - center) / teacher_temp, -1)
  log_p_s = jax.nn.log_softmax(student / student_temp, -1)
  ce = -jnp.einsum("qbk,vbk->qv", p_t, log_p_s) / student.shape[1]  # [2, V]
  views = student.shape[0]
  pairs = 1.0 - jnp.eye(2, views)  # teacher view q against student view v != q
  loss = jnp.sum(ce * pairs) / jnp.sum(pairs)
  entropy = jnp.sum(jax.scipy.special.entr(p_t), -1).mean()
  # KL(P_t || P_s) over the same pairs: cross-entropy minus the teacher's entropy.
  return loss, {"teacher_entropy": entropy, "kl": loss - entropy}


def update_center(center, teacher, momentum):
  """The running mean of the teacher's outputs [2, B, K] over every row."""
  rows = teacher.reshape(-1, teacher.shape[-1])
  # The mean as a product with ones: XLA's CPU reduction over the leading
  # axis of a [rows, 65536] array is over 20x slower than this matvec.
  mean = jnp.ones((rows.shape[0],), rows.dtype) @ rows / rows.shape[0]
  return momentum * center + (1.0 - momentum) * mean


def ema(teacher, student, momentum):
  return optax.incremental_update(student, teacher, 1.0 - momentum)


# --- the network -------------------------------------------------------------


class Network(nn.Module):
  """A ViT without a classifier and the DINO head on its class token."""
  backbone: vit.ViT
  head: dino_head.DINOHead

  def __call__(self, images, train=False):
    features, _ = self.backbone(images, train=train)
    return self.head(features)


def validate(config):
  """One-line errors before anything compiles."""
  images.validate(config.data, ("pp_decode", "pp_global", "pp_local", "pp_eval"))
  config_lib.check(len(config.data.pp_global) == 2, "data.pp_global",
                   f"{len(config.data.pp_global)} pipelines", "give one per global crop: 2")
  d, m = config.dino, config.model
  config_lib.check_choice(config, "model.name", {"vit"})
  try:
    patch = vit.parse_variant(m.variant)["patch"]
  except ValueError as e:
    raise config_lib.ConfigError("model.variant", str(e), "e.g. S/16") from None
  config_lib.check(m.out_dim > 0, "model.out_dim", f"{m.out_dim} is not positive",
                   "e.g. 65536 (the paper) or 1024 (small data)")
  config_lib.check(d.teacher_temp <= d.student_temp and d.warmup_teacher_temp <= d.student_temp,
                   "dino.teacher_temp", f"teacher temperature {d.teacher_temp} (warm-up from "
                   f"{d.warmup_teacher_temp}) is above the student's {d.student_temp}",
                   "the teacher must be sharper: keep it below dino.student_temp")
  config_lib.check(d.local_size < m.image_size, "dino.local_size",
                   f"local crops of {d.local_size} are not smaller than the global "
                   f"crops of {m.image_size}", "make local crops smaller (224 / 96 in the paper)")
  for key, size in (("model.image_size", m.image_size), ("dino.local_size", d.local_size)):
    config_lib.check(size % patch == 0, key,
                     f"{size} is not divisible by the patch size", "use a multiple of the patch")
  config_lib.check(0 <= d.center_momentum < 1, "dino.center_momentum",
                   f"{d.center_momentum} is not in [0, 1)", "0.9 as the paper")


# --- the experiment ----------------------------------------------------------


def make_network(m):
  """The classification experiment's ViT without its classifier, and the head."""
  head = dino_head.DINOHead(out_dim=m.out_dim, hidden=m.head_hidden, bottleneck=m.bottleneck,
                            norm_last_layer=m.norm_last_layer, dtype=jnp.dtype(m.dtype))
  return Network(backbone.make(m, 0), head)


def multicrop(data, num_local):
  """(example, rng) -> {"global": [2, S, S, C], "local": [N, s, s, C]}: the
  image decoded once, then each view through its own pipeline."""
  decode = image_ops.build(data.pp_decode, "data.pp_decode")
  views = [image_ops.build(pp, "data.pp_global") for pp in data.pp_global]
  local = image_ops.build(data.pp_local, "data.pp_local")

  def fn(example, rng):
    example = decode(example, rng)
    out = {"global": np.stack([v(example, rng)["image"] for v in views])}
    if num_local:
      out["local"] = np.stack([local(example, rng)["image"] for _ in range(num_local)])
    return out
  return fn


class Experiment(features.ImageFeatures):
  item_name = "images"
  validate = staticmethod(validate)

  def __init__(self, config, workdir=None, read_data=True):
    super().__init__(config, workdir)
    self.classes = images.class_names(config.data)
    self.network = make_network(config.model)
    self.vit = self.network.backbone
    self.num_local = config.dino.local_crops
    # Epochs (of the schedules) from the training split's size; without data
    # (`compile`), data.train_images.
    src = images.source(config.data, config.data.train_split) if read_data else None
    self.train_images = len(src) if read_data else config.data.train_images
    self.check_knn(self.train_images)
    self._eval = {}
    self.channels = self.check_pipelines(
        src[0] if read_data else
        {"image": np.full((config.model.image_size,) * 2 + (3,), 255, np.uint8)})

  def check_pipelines(self, example):
    """The views' shapes from one image (a blank one without data), before
    anything compiles: global crops at model.image_size, local ones at
    dino.local_size. Returns the channels."""
    c = self.config
    views = images.run_pipeline(multicrop(c.data, self.num_local), example, "data.pp_global")
    g, s = views["global"], c.model.image_size
    config_lib.check(g.shape[1:3] == (s, s), "data.pp_global",
                     f"makes {g.shape[1]} x {g.shape[2]} crops but model.image_size is {s}",
                     "crop the global views to model.image_size")
    if self.num_local:
      local, ls = views["local"], c.dino.local_size
      config_lib.check(local.shape[1:3] == (ls, ls), "data.pp_local",
                       f"makes {local.shape[1]} x {local.shape[2]} crops but "
                       f"dino.local_size is {ls}", "crop the local views to dino.local_size")
    return g.shape[-1]

  def abstract_batch(self, batch_size):
    s, ls, ch = self.config.model.image_size, self.config.dino.local_size, self.channels
    out = {"global": jax.ShapeDtypeStruct((batch_size, 2, s, s, ch), jnp.float32)}
    if self.num_local:
      out["local"] = jax.ShapeDtypeStruct((batch_size, self.num_local, ls, ls, ch), jnp.float32)
    return out

  # --- what the trainer needs --------------------------------------------
  def flops_per_step(self, batch_size):
    """Matmul FLOPs of a step (XLA's count of a scanned encoder counts one
    layer): the student's forward and backward (3x) over the 2 global and
    the local crops, the teacher's forward over the global ones."""
    vit_, head = self.network.backbone, self.network.head
    view = lambda size: (vit.matmul_flops(vit_, self.channels, size)
                         + dino_head.matmul_flops(head, vit_.width))
    student = 2 * view(vit_.image_size) + self.num_local * view(self.config.dino.local_size)
    return batch_size * (3 * student + 2 * view(vit_.image_size))

  def train_iter(self, local_batch, process_index, process_count):
    c = self.config
    src = images.source(c.data, c.data.train_split)
    if jax.process_index() == 0:
      print(f"data: {len(src):,} training images (labels unused), 2 global + "
            f"{self.num_local} local crops each", flush=True)
    return iter(images.train_dataset(
        src, multicrop(c.data, self.num_local), local_batch, process_index, process_count,
        c.total_steps, c.batch_size, c.seed, workers=c.data.workers))

  def init(self, rng, batch_size):
    s = self.config.model.image_size
    params = self.network.init(rng, jnp.zeros((1, s, s, self.channels)))["params"]
    # The teacher starts as a copy of the student; the centre at zero.
    return {"params": params,
            "extra": {"teacher": params, "center": jnp.zeros((self.config.model.out_dim,))}}

  def steps_per_epoch(self):
    return max(self.train_images // self.config.batch_size, 1)

  def loss(self, params, state, batch, ctx):
    d = self.config.dino
    teacher, center = state["extra"]["teacher"], state["extra"]["center"]
    if d.freeze_last_layer_epochs:
      # The last layer is not trained in the first epoch(s): DINO's remedy for
      # early instability. Its gradient is zero there (weight decay leaves
      # its output alone: its rows are normalised).
      frozen = ctx.step < d.freeze_last_layer_epochs * self.steps_per_epoch()
      params = {**params, "head": {
          k: jax.tree.map(lambda x: jnp.where(frozen, jax.lax.stop_gradient(x), x), v)
          if k == dino_head.LAST_LAYER else v for k, v in params["head"].items()}}
    # Each image's views stay together ([B, V, ...] -> [B * V, ...]): the
    # batch axis is sharded over the mesh, and merging it with the views
    # axis after it keeps every device on its own images. (Views first,
    # [V * B, ...], cannot be sharded so and would be gathered: every
    # device would then compute the whole global batch.)
    b = batch["global"].shape[0]
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    views_first = lambda y, v: jnp.swapaxes(y.reshape(b, v, -1), 0, 1)  # [V, B, K]
    glob = flat(batch["global"])
    rng_g, rng_l = jax.random.split(ctx.rng)
    student = views_first(self.network.apply({"params": params}, glob, train=True,
                                             rngs={"dropout": rng_g}), 2)
    if self.num_local:
      local = self.network.apply({"params": params}, flat(batch["local"]), train=True,
                                 rngs={"dropout": rng_l})
      student = jnp.concatenate([student, views_first(local, self.num_local)], 0)
    t_out = jax.lax.stop_gradient(views_first(self.network.apply({"params": teacher}, glob), 2))
    temp = teacher_temperature(ctx.step, d.warmup_teacher_temp_epochs * self.steps_per_epoch(),
                               d.warmup_teacher_temp, d.teacher_temp)
    # Softmaxes at temperature 0.04 over 65,536 outputs: float32, whatever
    # the network computes in.
    f32 = lambda x: x.astype(jnp.float32)
    loss, monitors = dino_loss(f32(student), f32(t_out), center, d.student_temp, temp)
    new_center = update_center(center, t_out, d.center_momentum)
    monitors.update(center_norm=jnp.linalg.norm(new_center), teacher_temp=temp,
                    momentum=self.momentum(ctx.step))
    return loss, (monitors, dict(state, extra={"teacher": teacher, "center": new_center}))

  def momentum(self, step):
    d = self.config.dino
    return cosine(d.momentum_teacher, 1.0, step, self.config.total_steps)

  def post_update(self, params, extra, step):
    """The teacher follows the student as updated by this step."""
    return params, dict(extra, teacher=ema(extra["teacher"], params, self.momentum(step)))

  # --- evaluation: the teacher's class-token features --------------------
  def feature_variables(self, state):
    return state["extra"]["teacher"]["backbone"]

  attention_params = feature_variables

  def _features(self, params, batch):
    features, _ = self.vit.apply({"params": params}, batch["image"])
    return {"features": features, "label": batch["label"]}

  def evaluate(self, state, mesh, step, writer):
    return self.feature_evals(state, mesh, "eval")

  def finish(self, state, mesh, writer):
    """The test split, once: k-NN and a linear probe of the teacher's
    features (L2 chosen on validation), and attention maps of test images."""
    results = self.feature_evals(state, mesh, "test", test=True, probe=True)
    if jax.process_index() == 0:
      self.test_maps(state, writer)
    return results
