"""RNN-era translation: RNNencdec vs RNNsearch (Bahdanau et al. 2015) and
Luong et al. (2015) global attention.

Command (the default `./launch.sh` experiment):
  ./launch.sh train configs/seq2seq.py:data=ding --workdir runs/ding_rnnsearch
  RNNsearch DE->EN on Ding, 1900 steps, Adam 2e-3: about 20 minutes on 2 CPU
  cores; test BLEU 5.11 (seeds 0/1/2 in docs/rnnsearch.md), chosen on validation
  against the Transformer of configs/wmt.py:ding with an equal budget.
Variants (`key=value,...`):
  model=rnnencdec|rnnsearch|luong   score=concat|general|dot (luong)
  data=ding (DE->EN) | bible (EN->ES, long sentences) | folder | a tfds name
  cell=gru|lstm|rnn   size=tiny|small|base|paper   runlocal=True
  steps=N (default: the data's, 1900 for ding, else 3000)
Deeper stacks: --config.model.num_layers=4 (Luong et al. used 4 LSTM layers).
Bring your own parallel text: data=folder --config.data.folder=DIR with
  {src_lang}.{split}.txt / {tgt_lang}.{split}.txt aligned line by line;
  data.src_lang -> data.tgt_lang default to de -> en, e.g. for fr.train.txt
  and en.train.txt: --config.data.src_lang=fr --config.data.tgt_lang=en.
Evaluation: validation loss, sacreBLEU of beam-4 translations (signature
printed), samples and alignment heatmaps in the workdir.
"""
import ml_collections

from attnlab.config import check, common, parse_arg

# embed is also the maxout deep-output width. "paper" is Bahdanau et al.'s
# size; "small" fits a 2-core CPU.
SIZES = {"tiny": dict(embed=16, hidden=32), "small": dict(embed=128, hidden=256),
         "base": dict(embed=256, hidden=512), "paper": dict(embed=620, hidden=1000)}
# SentencePiece vocabulary; training pairs longer than max_len pieces are
# dropped (evaluation translates every sentence whole). Ding's steps and
# learning rate are the ones chosen on validation BLEU (docs/rnnsearch.md, "The
# default": tries R1-R4); 1900 steps match the Transformer's wall time.
DATASETS = {
    "ding": dict(src="de", tgt="en", vocab=4000, max_len=32, steps=1900, lr=2e-3),
    "bible": dict(src="en", tgt="es", vocab=4000, max_len=48),
    "wmt14_translate/de-en": dict(src="de", tgt="en", vocab=32000, max_len=64),
    "wmt17_translate/de-en": dict(src="de", tgt="en", vocab=32000, max_len=64),
}
OTHER_DATA = dict(src="de", tgt="en", vocab=8000, max_len=48)  # a folder, other tfds


def get_config(arg=None):
  arg = parse_arg(arg, model="rnnsearch", data="ding", cell="gru", score="concat",
                  size="small", steps=0, runlocal=False)
  check(arg.size in SIZES, "arg.size", f"unknown size {arg.size!r}",
        f"use one of {sorted(SIZES)}")
  d = DATASETS.get(arg.data, OTHER_DATA)
  c = common("translate", total_steps=arg.steps or d.get("steps", 3000), batch_size=64,
             log_every=50, eval_every=1000, ckpt_every=500,
             optim=dict(lr=d.get("lr", 1e-3), warmup_steps=200, clip_norm=1.0))
  c.label_smoothing = 0.0
  src, tgt, vocab, max_len = d["src"], d["tgt"], d["vocab"], d["max_len"]
  c.data = ml_collections.ConfigDict(dict(
      source=arg.data, folder="", data_dir="", src_lang=src, tgt_lang=tgt,
      train_split="train", eval_split="validation",
      test_split="test", vocab_size=vocab, max_len=max_len))
  embed, hidden = SIZES[arg.size]["embed"], SIZES[arg.size]["hidden"]
  c.model = ml_collections.ConfigDict(dict(
      model=arg.model, cell=arg.cell, score=arg.score, embed=embed,
      hidden=hidden, dropout=0.1, num_layers=1))
  c.decode = ml_collections.ConfigDict(dict(
      beam=4, alpha=0.6, extra_len=50, batch_tokens=2048, num_bleu=500, num_plots=4,
      buckets=(0, 10, 20, 30, 40, 50, 60, 1000)))
  if arg.runlocal:
    c.total_steps = 4
    c.batch_size = 8
    c.log_every = c.eval_every = c.ckpt_every = 2
    embed, hidden = SIZES["tiny"]["embed"], SIZES["tiny"]["hidden"]
    c.model.update(embed=embed, hidden=hidden)
    c.data.update(vocab_size=64, max_len=16)
    c.decode.update(batch_tokens=256, num_bleu=8, num_plots=1)
    c.optim.warmup_steps = 0
  return c
