"""Vision Transformer (Dosovitskiy et al. 2021) image classification.

  ./launch.sh train configs/vit.py:fmnist --workdir runs/vit_fmnist
  ./launch.sh train configs/vit.py:i1k,variant=B/16 --workdir gs://BUCKET/vit_b16
  ./launch.sh compile configs/vit.py:i1k,variant=B/16 --tpu v5e-256   (its slice; i21k
      L/16: v5e-256 too)

Variants (first arg; then key=value,...: variant=SIZE/PATCH, steps=N, probe=True,
runlocal=True; probe=True with --config.init_from=RUN: a linear probe of that
run's frozen features on this variant's data, nothing else trained):
  fmnist  embedded: Fashion-MNIST (Debian's package, 55k train / 5k
          validation / 10k test, 28 x 28 grey), patches of 4 (7 x 7 = 49
          tokens + class token), a ViT of Ti's shape at half its width (6
          layers, 96 wide, 3 heads, MLP 384; 0.7 M parameters), AdamW 1e-3,
          batch 128, 800 steps (1.9 epochs), flips. About 10 minutes on 2
          CPU cores; docs/vit.md reports its time and test accuracy.
  pixels  pixels as tokens (the lectures' "Idea #3"): Fashion-MNIST shrunk
          to 14 x 14, patches of 1, so 196 tokens + the class token, each
          one grey value; otherwise as fmnist. Its attention costs grow
          with the 4th power of the side (`./launch.sh tables vision`).
  emoji   emoji categories (npm's Google and Twitter emoji, 9 categories;
          test emoji never seen in training), grey 32 x 32 as Fashion-MNIST's
          images are, so that a Fashion-MNIST run transfers to it:
          --config.init_from=runs/vit_fmnist (positions resized 7x7 -> 8x8,
          head new); otherwise as fmnist, 600 steps.
  folder  bring your own images: --config.data.folder=ROOT with
          ROOT/{train,test}[,validation]/<label>/*.png|jpg; everything
          resized to 32 x 32 RGB, patches of 4; otherwise as fmnist.
  i1k     big_vision's ImageNet-1k recipe from scratch ("How to train your
          ViT?", Steiner et al. 2021): 224 x 224, inception crop + flip,
          Adam (b1 0.9, b2 0.999) lr 1e-3, decoupled weight decay 1e-4 on
          kernels only (big_vision scales it by the schedule, not by the
          lr: optax.adamw's 0.1 here), 10k warm-up steps, cosine, batch
          4096, 300 epochs (93,750 steps), clip 1.0, a tanh pre-logits
          layer, the sigmoid loss with the head's bias at -6.9, and
          big_vision's augmentation per variant (AUGMENT: RandAugment(2, M)
          and mixup; B/16: M=15, mixup 0.5; no dropout or stochastic depth).
          Expected (Steiner et al. 2021, Fig. 4, ImageNet-1k, 300 epochs):
          B/16 about 79% top-1. Needs imagenet2012 prepared as a tfds dataset.
          Runtime: about a day on a v3-32 for B/16 at this schedule.
  i21k    the ViT paper's ImageNet-21k pretraining (section 4.1, B.1): Adam
          lr 1e-3, weight decay 0.1, batch 4096, 90 epochs, 10k warm-up,
          linear decay, a tanh pre-logits layer; imagenet21k prepared.
  ft384   the paper's fine-tuning (B.1.1): SGD momentum 0.9, no weight
          decay, batch 512, cosine from lr 0.01, 20k steps at 384 x 384,
          clip 1.0, from --config.init_from=RUN (head new, positions
          resized to the 24 x 24 grid). Expected for B/16 from ImageNet-21k:
          84.0% ImageNet top-1 (Table 2 / 5, 384 resolution).
"""
import ml_collections

from attnlab.config import common, for_pods, parse_arg, parse_variant
from attnlab.models import vit

TASKS = {"fmnist": 800, "pixels": 800, "emoji": 600, "folder": 800, "i1k": 93_750, "i21k": 300_000, "ft384": 20_000}
# big_vision's augmentation per variant for i1k (Steiner et al. 2021, Fig. 4):
# RandAugment magnitude (2 ops) and mixup alpha.
AUGMENT = {"Ti/16": (0, 0.0), "S/32": (15, 0.2), "S/16": (15, 0.5), "B/32": (15, 0.5),
           "B/16": (15, 0.5), "L/16": (15, 0.5)}
KERNELS_ONLY = (("(.*/)?kernel", 1.0), (".*", 0.0))  # big_vision's weight-decay rule


def get_config(arg=None):
  task, rest = parse_variant(arg, TASKS, "fmnist")
  arg = parse_arg(rest, variant="", steps=0, probe=False, runlocal=False)
  steps = arg.steps or TASKS[task]
  c = common("classify", total_steps=steps, batch_size=4096, log_every=100,
             eval_every=max(steps // 10, 1), ckpt_every=1000,
             optim=dict(name="adamw", lr=1e-3, b1=0.9, b2=0.999, weight_decay=0.1,
                        warmup_steps=10_000, schedule="cosine", clip_norm=1.0,
                        wd_mults=KERNELS_ONLY))
  c.init_from = ""  # a run's workdir: fine-tune from its newest checkpoint
  c.linear_probe = False  # an L-BFGS probe on the pre-logits at each evaluation
  c.knn_k = 0  # > 0: DINO's weighted k-NN of the pre-logits at each evaluation
  c.knn_temperature = 0.07
  c.loss = "softmax"  # | "sigmoid"
  c.label_smoothing = 0.0
  c.eval_batch_size = 1024
  c.data = ml_collections.ConfigDict(dict(
      source="imagenet2012", folder="", data_dir="", train_split="train",
      eval_split="validation", test_split="test", holdout=0.1, mixup=0.0, workers=4,
      num_classes=0,  # 0: from the dataset; > 0 lets `compile` build a model without it
      probe_rows=50_000,  # training images the linear probe fits on (at most)
      knn_rows=50_000,    # and in the k-NN bank
      pp_train="decode|inception_crop(224)|flip_lr|value_range(-1, 1)",
      pp_eval="decode|resize_small(256)|central_crop(224)|value_range(-1, 1)"))
  c.model = ml_collections.ConfigDict(dict(
      name="vit", variant=arg.variant or "B/16", image_size=224,
      width=0, depth=0, mlp_dim=0, num_heads=0,  # 0: the variant's
      pool="tok", posemb="learn", representation_size=0, dropout=0.0,
      attention_dropout=0.0, implementation="xla", scan=False, remat="none", drop_path=0.0,
      head_bias=0.0, dtype="float32"))
  if task == "i1k":
    # ImageNet has no labelled test split: the validation set is reported,
    # and 1% of train (big_vision's minival) is what runs choose on.
    magnitude, mixup = AUGMENT.get(c.model.variant, AUGMENT["B/16"])
    c.data.update(train_split="train[:99%]", eval_split="train[99%:]",
                  test_split="validation", mixup=mixup,
                  pp_train="decode|inception_crop(224)|flip_lr|"
                           f"randaug(2, {magnitude})|value_range(-1, 1)")
    c.loss = "sigmoid"
    c.model.update(head_bias=-6.9,
                   representation_size=vit.parse_variant(c.model.variant)["width"])
  elif task == "i21k":
    c.data.update(source="imagenet21k", num_classes=21_843, train_split="train[:98%]",
                  eval_split="train[98%:99%]", test_split="train[99%:]")
    c.optim.update(schedule="linear", wd_mults=(("(.*/)?(bias|scale)", 0.0),))
    c.model.representation_size = vit.parse_variant(c.model.variant)["width"]
  elif task == "ft384":
    c.batch_size = 512
    c.data.update(train_split="train[:99%]", eval_split="train[99%:]",
                  test_split="validation",
                  pp_train="decode|inception_crop(384)|flip_lr|value_range(-1, 1)",
                  pp_eval="decode|resize_small(384)|central_crop(384)|value_range(-1, 1)")
    c.model.image_size = 384
    c.optim.update(name="sgd", lr=0.01, b1=0.9, weight_decay=0.0, warmup_steps=500)
  else:  # the embedded variants: Fashion-MNIST or a folder, on a laptop
    c.batch_size, c.eval_batch_size = 128, 500
    c.log_every, c.ckpt_every, c.eval_every = 50, 250, max(steps // 5, 1)
    c.optim.update(warmup_steps=min(400, steps // 4), weight_decay=0.05)
    c.data.workers = 1
    c.model.update(variant=arg.variant or "Ti/4", width=96, depth=6, mlp_dim=384,
                   num_heads=3)
    if task == "fmnist":
      c.data.update(source="fmnist", eval_split="validation", test_split="test",
                    pp_train="decode(1)|flip_lr|value_range(-1, 1)",
                    pp_eval="decode(1)|value_range(-1, 1)")
      c.model.image_size = 28
    elif task == "pixels":
      c.data.update(source="fmnist", eval_split="validation", test_split="test",
                    pp_train="decode(1)|resize(14)|flip_lr|value_range(-1, 1)",
                    pp_eval="decode(1)|resize(14)|value_range(-1, 1)")
      c.model.update(image_size=14, variant=arg.variant or "Ti/1")
    elif task == "emoji":
      c.data.update(source="emoji", eval_split="validation", test_split="test",
                    pp_train="decode(1)|resize(32)|flip_lr|value_range(-1, 1)",
                    pp_eval="decode(1)|resize(32)|value_range(-1, 1)")
      c.model.image_size = 32
    else:
      c.data.update(source="folder", eval_split="validation", test_split="test",
                    pp_train="decode|resize(32)|flip_lr|value_range(-1, 1)",
                    pp_eval="decode|resize(32)|value_range(-1, 1)")
      c.model.image_size = 32
  if task in ("i1k", "i21k", "ft384"):
    # bfloat16 compute, float32 state split over the chips; ImageNet-21k's
    # head (1024 x 21,843) whole on each: split into 4 rows per v5e-256
    # chip, the TPU compiler's program gathered it 196 times (8.3 GB).
    for_pods(c, [("head/.*", ())] if task == "i21k" else [])
  if task == "i1k":
    c.optim.mu_dtype = "bfloat16"  # Adam's first moment, as big_vision keeps it
  if arg.probe:
    # A linear probe of --config.init_from's frozen features: one step that
    # trains nothing but the (unused) head, then the probe at evaluation.
    c.linear_probe, c.knn_k = True, 20
    c.total_steps, c.eval_every = 1, 1
    c.optim.frozen = ("(?!head/).*",)
  c.optim.warmup_steps = min(c.optim.warmup_steps, c.total_steps // 4)
  if arg.runlocal:
    c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 16
    c.log_every = c.eval_every = c.ckpt_every = 2
    c.optim.warmup_steps = 0
    c.model.update(width=16, depth=1, mlp_dim=32, num_heads=2)
    c.knn_k = min(c.knn_k, 4)  # a folder of a few images
  return c
