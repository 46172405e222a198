"""Image captioning with Show, Attend and Tell (experiments/caption.py; Xu et
al. 2015): soft or hard attention over an image encoder's grid.

  ./launch.sh train configs/caption.py:emoji --workdir runs/caption_soft
  ./launch.sh train configs/caption.py:emoji,attention=hard --workdir runs/caption_hard
  ./launch.sh caption runs/caption_soft my_drawing.png
  ./launch.sh train configs/caption.py:folder --workdir runs/caption_mine --config.data.folder=ROOT
  ./launch.sh compile configs/caption.py:coco --tpu v5e-32     (its slice: TPU v5e, 32 chips)

Variants (first arg; then key=value,...: attention=soft|hard, tokens=word|
sentencepiece, frozen=True (the encoder not trained: with
--config.init_from=RUN, a classification run's encoder), steps=N,
runlocal=True):
  emoji   embedded: the emoji images of both art styles (64 x 64, resized
          to 32) with their names, short names and "name: keywords" as
          captions (attnlab/data/pairs.py); the validation and test emoji
          are never seen in training. A ViT of 4 layers, 128 wide, patches
          of 4: an 8 x 8 grid of annotations (its class token left out);
          a decoder of 128-d word embeddings, a 256-unit LSTM, attention
          of 128; lowercased words (every training word: 3,609 ids);
          Adam, batch 64, 2,000 steps. About 11 minutes here alone
          (docs/caption.md: the soft-vs-hard table, 3 seeds each, and its curves).
  openclipart  the same on the Open Clip Art drawings (public domain; their
          titles and keywords; test drawings unseen in training).
  folder  the same on your pairs: ROOT/{train,validation,test}/captions.tsv,
          `FILE<TAB>caption` lines, as CLIP's folders (docs/data.md).
  coco    the paper's recipe for a pod, on COCO as a captions folder (the
          Karpathy splits: 113k / 5k / 5k images, 5 captions each;
          --config.data.folder=ROOT): 224 x 224 images; the encoder a
          ViT-B/16 from a classification run (--config.init_from=RUN, e.g.
          configs/vit.py:i1k) and frozen, as the paper's VGG: its 14 x 14 x
          768 patch tokens stand for VGG's 14 x 14 x 512 conv5_4 features
          (section 3.1.1); a vocabulary of the 10,000 most frequent words
          (section 5.1); Adam (section 4.3); beam search. Xu et al., Table
          1, BLEU-1/2/3/4: soft 70.7 / 49.2 / 34.4 / 24.3, hard 71.8 / 50.4 /
          35.7 / 25.0. The decoder's sizes (512 / 1024 / 512) are those of
          common re-implementations, not stated in the paper.
  flickr8k  the same recipe for Flickr8k (6k / 1k / 1k images, 5 captions
          each; the paper trained it with RMSProp, here Adam): Table 1,
          soft 67 / 44.8 / 29.9 / 19.5, hard 67 / 45.7 / 31.4 / 21.3.
"""
import ml_collections

from attnlab.config import common, for_pods, parse_arg, parse_variant

TASKS = ("emoji", "openclipart", "folder", "coco", "flickr8k")
EMBEDDED = ("emoji", "openclipart", "folder")
# Images of a pod recipe: 113k COCO (or 6k Flickr8k) training images, 30 epochs.
STEPS = {"coco": 30 * 113_287 // 256, "flickr8k": 30 * 6_000 // 256}


def get_config(arg=None):
  task, rest = parse_variant(arg, TASKS, "emoji")
  arg = parse_arg(rest, attention="soft", tokens="word", frozen=False, steps=0,
                  runlocal=False)
  embedded = task in EMBEDDED
  steps = arg.steps or (2000 if embedded else STEPS[task])
  c = common("caption", total_steps=steps, batch_size=64 if embedded else 256,
             log_every=50 if embedded else 100, eval_every=max(steps // 4, 1),
             ckpt_every=500 if embedded else 1000,
             optim=dict(name="adam", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, warmup_steps=100 if embedded else 1000,
                        schedule="cosine", clip_norm=5.0))
  c.eval_batch_size = 256
  c.init_from = ""  # a classification run whose encoder this run starts from
  c.caption = ml_collections.ConfigDict(dict(
      attention=arg.attention,  # "soft" | "hard"
      expected_prob=0.5,        # hard: chance of the expected context (section 4.1)
      penalty=1.0,              # lambda of the doubly stochastic penalty (eq. 14)
      # lambda_r and lambda_e of eq. 12 (hard): the authors' code's 1/10 on a
      # reward per word, and 0.002.
      reward_weight=0.1,
      entropy_weight=0.002,
      baseline_decay=0.9))      # the moving average b of eq. 12 (hard)
  c.model = ml_collections.ConfigDict(dict(
      # The encoder: any vision model of classify (name: vit | resnet | swin).
      name="vit", variant="B/16", image_size=224,
      width=0, depth=0, mlp_dim=0, num_heads=0,  # 0: the variant's
      pool="tok", posemb="learn", representation_size=0, dropout=0.0,
      attention_dropout=0.0, drop_path=0.0, head_bias=0.0, implementation="xla",
      scan=False, remat="none", dtype="float32",
      norm="batch", small_inputs=False,          # resnet
      depths=(), patch=4, window=7,              # swin
      # The decoder (attnlab/models/show_attend_tell.py).
      embed=512, hidden=1024, attention_dim=512, decoder_dropout=0.5))
  c.data = ml_collections.ConfigDict(dict(
      source="folder", folder="", data_dir="", train_split="train",
      eval_split="validation", test_split="test", holdout=0.1, workers=8,
      tokens=arg.tokens,  # "word" | "sentencepiece"
      vocab_size=10_000, min_count=1, lowercase=True, max_len=32,
      pp_train="decode|resize(224)|value_range(-1, 1)",
      pp_eval="decode|resize(224)|value_range(-1, 1)"))
  c.decode = ml_collections.ConfigDict(dict(beam=3, alpha=0.0, max_len=32, num_samples=20))
  if not embedded:
    # bfloat16 compute; data parallel: with the parameters split, the TPU
    # compiler's program gathered the decoder's in its loop over the words
    # (12.1 ms of collectives, 32.8 ms per step against 30.4).
    for_pods(c, split=False)
  if embedded:
    c.data.update(source=task, workers=2, vocab_size=5000, max_len=24,
                  pp_train="decode|resize(32)|inception_crop(32, 0.8, 1.0)|value_range(-1, 1)",
                  pp_eval="decode|resize(32)|value_range(-1, 1)")
    c.model.update(variant="Ti/4", image_size=32, width=128, depth=4, mlp_dim=512,
                   num_heads=4, embed=128, hidden=256, attention_dim=128,
                   decoder_dropout=0.2)
    c.decode.max_len = 24
    c.eval_at_start = True
  else:
    c.model.update(scan=True, remat="full")
    arg.frozen = True  # the paper's encoder is not trained
  if task == "flickr8k":
    c.optim.warmup_steps = 100
  if arg.frozen:
    c.optim.frozen = ("backbone/.*",)
  c.optim.warmup_steps = min(c.optim.warmup_steps, c.total_steps // 4)
  if arg.runlocal:
    c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 16
    c.log_every = c.eval_every = c.ckpt_every = 2
    c.optim.warmup_steps = 0
    c.model.update(width=16, depth=1, mlp_dim=32, num_heads=2, embed=16, hidden=16,
                   attention_dim=16)
    c.decode.update(max_len=8, num_samples=4)
  return c
