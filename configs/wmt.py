"""The Transformer (Vaswani et al. 2017) for translation.

  ./launch.sh train configs/wmt.py:ding --workdir runs/wmt_ding     (DE->EN on Ding)
  ./launch.sh train configs/wmt.py:base --workdir gs://BUCKET/base  (a TPU pod slice)
  ./launch.sh compile configs/wmt.py:big --tpu v5e-32     (big's slice: TPU v5e, 32 chips)

Variants (first arg; then key=value,...: steps=N, runlocal=True):
  base  Table 3 "base" on tfds wmt14_translate/de-en, EN->DE, newstest2014
        test: d_model 512, 8 heads, FFN 2048, 6+6 layers, dropout 0.1,
        ~25k source + 25k target tokens per step, 100k steps. Paper: 27.3
        BLEU, 12 hours on 8 P100 GPUs (3.3e18 FLOPs).
  big   d_model 1024, 16 heads, FFN 4096, dropout 0.3, 300k steps. Paper:
        28.4 BLEU, 3.5 days on 8 P100 GPUs (2.3e19 FLOPs).
  ding  DE->EN on the Ding corpus (16k sentence pairs), sized to train in
        ~13 minutes on a 2-core CPU: d_model 128, 4 heads, FFN 512, 3+3
        layers, 64 packed rows x 32 pieces, 2000 steps; pre-norm and twice
        the paper's learning rate (the small-data recipe of Nguyen & Salazar
        2019, "Transformers without Tears"; the paper's post-norm at 1x
        reached 2.40 validation BLEU against 5.27, docs/rnnsearch.md). Validation BLEU
        during training; sacreBLEU on the test split once at the end,
        samples, attention maps.
On a pod: batch_size is the global number of packed rows of max_len
tokens; base uses 512 rows x 64 = 32k tokens per side (a v4-32's 16 chips
take 32 rows each); mesh (("data", -1),) is pure data parallelism.
Training: Adam (0.9, 0.98, 1e-9), lrate = d_model^-0.5 * min(step^-0.5,
step * warmup^-1.5) with warmup 4000 (eq. 3), label smoothing 0.1,
source/target/output embeddings shared over a joint SentencePiece vocab.
"""
import ml_collections

from attnlab.config import common, for_pods, parse_arg, parse_variant

# layers: on each side; rows x max_len: packed rows of max_len pieces per step
VARIANTS = {
    "base": dict(d_model=512, heads=8, d_ff=2048, layers=6, dropout=0.1, rows=512,
                 max_len=64, steps=100_000),
    "big": dict(d_model=1024, heads=16, d_ff=4096, layers=6, dropout=0.3, rows=512,
                max_len=64, steps=300_000),
    "ding": dict(d_model=128, heads=4, d_ff=512, layers=3, dropout=0.1, rows=64,
                 max_len=32, steps=2000),
}


def get_config(arg=None):
  variant, rest = parse_variant(arg, VARIANTS, "ding")
  arg = parse_arg(rest, steps=0, runlocal=False)
  v = VARIANTS[variant]
  d_model, heads, d_ff, layers = v["d_model"], v["heads"], v["d_ff"], v["layers"]
  dropout, rows, max_len, steps = v["dropout"], v["rows"], v["max_len"], v["steps"]
  steps = arg.steps or steps
  warmup = 4000 if variant != "ding" else 400
  c = common("translate", total_steps=steps, batch_size=rows, log_every=50,
             eval_every=steps if variant == "ding" else 5000,
             ckpt_every=200 if variant == "ding" else 2000,
             optim=dict(lr=(2 if variant == "ding" else 1) * d_model ** -0.5,
                        schedule="rsqrt", warmup_steps=warmup,
                        b1=0.9, b2=0.98, eps=1e-9, clip_norm=0.0))
  c.label_smoothing = 0.1
  wmt = variant != "ding"
  c.data = ml_collections.ConfigDict(dict(
      source="wmt14_translate/de-en" if wmt else "ding", folder="", data_dir="",
      src_lang="en" if wmt else "de", tgt_lang="de" if wmt else "en",
      train_split="train", eval_split="validation",
      test_split="test", vocab_size=32000 if wmt else 4000,
      max_len=max_len, pack=True))
  c.model = ml_collections.ConfigDict(dict(
      model="transformer", d_model=d_model, num_heads=heads, d_ff=d_ff,
      enc_layers=layers, dec_layers=layers, dropout=dropout, attention_dropout=0.0,
      pre_norm=variant == "ding", learned_positions=False, implementation="xla",
      scan=False, remat="none",  # attnlab/nn/blocks.Stack: deep stacks' memory
      dtype="float32"))
  c.decode = ml_collections.ConfigDict(dict(
      beam=4, alpha=0.6, extra_len=50, batch_tokens=2048, num_bleu=200, num_plots=2,
      buckets=(0, 10, 20, 30, 40, 50, 60, 1000)))
  if wmt:
    # bfloat16 compute; data parallel: split and gathered once per step
    # (`gather_params`) the TPU compiler estimated 26.27 ms per step for
    # WMT big on v5e-32 against 23.98 (its collectives 6.94 against 3.07 ms).
    for_pods(c, split=False)
  if arg.runlocal:
    c.total_steps = 4
    c.batch_size = 8
    c.log_every = c.eval_every = c.ckpt_every = 2
    c.model.update(d_model=16, num_heads=2, d_ff=32, enc_layers=1, dec_layers=1)
    c.data.update(vocab_size=64, max_len=16)
    c.decode.update(batch_tokens=256, num_bleu=8, num_plots=1)
    c.optim.warmup_steps = 0
  return c
