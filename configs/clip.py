"""CLIP contrastive image-text pretraining (experiments/clip.py; Radford et
al. 2021).

  ./launch.sh train configs/clip.py:emoji --workdir runs/clip_emoji
  ./launch.sh train configs/clip.py:openclipart --workdir runs/clip_openclipart
  ./launch.sh train configs/clip.py:folder --workdir runs/clip_mine --config.data.folder=ROOT
  ./launch.sh compile configs/clip.py:laion,variant=B/32 --tpu v5e-256   (its slice: 32k pairs
      on 256 TPU v5e chips)

Variants (first arg; then key=value,...: variant=SIZE/PATCH of the image
tower, steps=N, runlocal=True):
  emoji   embedded: the emoji images of both art styles (64 x 64, resized
          to 32) with their names and keywords as captions; test emoji are
          never seen in training. A ViT of 4 layers, 128 wide, patches of 4,
          and a causal text Transformer of 3 layers, 128 wide, context 24,
          SentencePiece vocabulary trained on the training captions;
          embeddings of 128; batch 256, 400 steps (17 epochs, 20 minutes
          here). Zero-shot accuracy on the 9 emoji categories and on
          Fashion-MNIST's class names, and recall@1/5/10 of held-out pairs,
          against chance (docs/clip.md).
  openclipart  the same on the Open Clip Art drawings (3,338 of them in
          16 categories, public domain; names and keywords from their SVG
          metadata as captions; test drawings unseen in training):
          zero-shot on its categories, and on the emoji categories and
          Fashion-MNIST's classes.
  folder  the same on your pairs: ROOT/<split>/captions.tsv (docs/data.md).
  laion   the open_clip recipe for LAION-400M (Cherti et al. 2023;
          Ilharco et al. 2021): image tower ViT-B/32 at 224, text tower 12
          layers, 512 wide, 8 heads, context 77, embeddings of 512; AdamW
          (b2 0.98, eps 1e-6), lr 5e-4, weight decay 0.2 (none on gains, biases,
          class token, temperature),
          10k warm-up steps, cosine; global batch 32,768 over a pod slice;
          32 epochs of 400 M pairs; layers scanned and rematerialised
          (6.2 GiB of temporaries per device at 512 pairs each, not 52.5).
          Reference zero-shot ImageNet top-1:
          OpenAI's B/32 (400 M private pairs) 63.2%, open_clip's B/32 on
          LAION-400M 62.96%. The pairs come as a captions folder
          (--config.data.folder); none is on these machines.
"""
import ml_collections

from attnlab.config import EMBEDDINGS_BY_COLUMNS, common, for_pods, parse_arg, parse_variant

TASKS = ("emoji", "openclipart", "folder", "laion")
ZERO_SHOT_SETS = {"emoji": ("fmnist",), "openclipart": ("emoji", "fmnist")}
# open_clip's rule: no weight decay on gains, biases, the class token and the
# temperature (its 1-D parameters); the rest, embeddings included, decays.
NO_DECAY = (("(.*/)?(bias|scale|cls|log_scale)", 0.0),)


def get_config(arg=None):
  task, rest = parse_variant(arg, TASKS, "emoji")
  arg = parse_arg(rest, variant="", steps=0, runlocal=False)
  embedded = task != "laion"
  steps = arg.steps or (400 if embedded else 32 * 400_000_000 // 32768)
  c = common("clip", total_steps=steps, batch_size=256 if embedded else 32768,
             log_every=25 if embedded else 100, eval_every=max(steps // 4, 1),
             ckpt_every=200 if embedded else 2000,
             optim=dict(name="adamw", lr=5e-4, b1=0.9, b2=0.98, eps=1e-6,
                        weight_decay=0.2, warmup_steps=10_000 if not embedded else 100,
                        schedule="cosine", clip_norm=0.0, wd_mults=NO_DECAY))
  c.eval_batch_size = 500 if embedded else 1024
  c.clip = ml_collections.ConfigDict(dict(
      loss="softmax",       # | "sigmoid" (SigLIP)
      # | "local" (each device its rows against all columns; less memory)
      # | "per_device" (the ablation: negatives from the device's own rows)
      loss_form="global"))
  c.model = ml_collections.ConfigDict(dict(
      name="vit", variant=arg.variant or "B/32", image_size=224,
      width=0, depth=0, mlp_dim=0, num_heads=0,  # 0: the variant's
      pool="tok", posemb="learn", representation_size=0, dropout=0.0,
      attention_dropout=0.0, drop_path=0.0, head_bias=0.0, implementation="xla",
      scan=False, remat="none", dtype="float32",
      text_variant="B", text_width=0, text_depth=0, text_heads=0, text_mlp_dim=0,
      embed_dim=512))
  c.data = ml_collections.ConfigDict(dict(
      source="folder", folder="", data_dir="", train_split="train",
      eval_split="validation", test_split="test", holdout=0.1, workers=8,
      vocab_size=49408, context=77,
      # Labelled tfds image sets also classified zero-shot by their class
      # names (their validation split during training, test at the end).
      zero_shot_sets=(), zero_shot_rows=2000,
      pp_train="decode|inception_crop(224, 0.9, 1.0)|value_range(-1, 1)",
      pp_eval="decode|resize_small(224)|central_crop(224)|value_range(-1, 1)"))
  if not embedded:
    for_pods(c, EMBEDDINGS_BY_COLUMNS)  # bfloat16 compute, float32 state split
  if embedded:
    c.data.update(source=task, workers=2, vocab_size=2000, context=24,
                  zero_shot_sets=ZERO_SHOT_SETS.get(task, ()),
                  pp_train="decode|resize(32)|inception_crop(32, 0.7, 1.0)|value_range(-1, 1)",
                  pp_eval="decode|resize(32)|value_range(-1, 1)")
    c.model.update(variant=arg.variant or "Ti/4", image_size=32, width=128, depth=4,
                   mlp_dim=512, num_heads=4, text_width=128, text_depth=3, text_heads=4,
                   embed_dim=128)
    c.eval_at_start = True
  else:
    # Scanned and rematerialised layers: 6.2 GiB of temporaries per device
    # at 512 pairs each instead of 52.5 (docs/clip.md); remat alone saves nothing.
    c.model.update(scan=True, remat="full")
  c.optim.warmup_steps = min(c.optim.warmup_steps, c.total_steps // 4)
  if arg.runlocal:
    c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 16
    c.log_every = c.eval_every = c.ckpt_every = 2
    c.optim.warmup_steps = 0
    c.data.update(vocab_size=200, context=40)
    c.model.update(width=16, depth=1, mlp_dim=32, num_heads=2, text_width=16, text_depth=1,
                   text_heads=2, embed_dim=16)
  return c
