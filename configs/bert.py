"""BERT (Devlin et al. 2019) on Shakespeare: masked-LM pretraining, then a
passage classifier fine-tuned from the pretrained checkpoint.

  ./launch.sh train configs/bert.py:pretrain --workdir runs/bert
  ./launch.sh train configs/bert.py:classify --workdir runs/bert_genre \\
      --config.init_from=runs/bert
  ./launch.sh train configs/bert.py:classify --workdir runs/bert_genre_scratch
      (no init_from: the same classifier from random weights, the baseline)

Variants (first arg; then key=value,...: size=tiny|mini, steps=N, runlocal=True):
  pretrain  passages of seq_len SentencePiece tokens, [CLS] ... [SEP]; 15% of
            tokens chosen, 80% -> [MASK], 10% random, 10% kept; loss and
            accuracy over the chosen tokens, on the 4 held-out plays too.
  classify  each passage labelled with its play's First Folio genre (comedy,
            history, tragedy); a linear head on the [CLS] pooler; accuracy
            on the held-out plays (Hamlet, Macbeth, The Tempest, Twelfth
            Night), which neither pretraining nor fine-tuning saw.
Sizes are Turc et al. (2019)'s small BERTs: tiny L=2/H=128, mini L=4/H=256,
and BERT-base (L=12/H=768, 12 heads) for pods. pod=True: Devlin et al.'s
pretraining shape, 256 sequences of 512 WordPiece-sized (30,522) tokens;
meant for base on a v5e-32:
  ./launch.sh compile configs/bert.py:pretrain,size=base,pod=True --tpu v5e-32
No next-sentence prediction: RoBERTa (Liu et al. 2019) found it does not help.
"""
import ml_collections

from attnlab.config import EMBEDDINGS_BY_COLUMNS, check, common, for_pods, parse_arg, parse_variant

# d_ff = 4 d_model
SIZES = {"tiny": dict(d_model=128, heads=2, layers=2),
         "mini": dict(d_model=256, heads=4, layers=4),
         "base": dict(d_model=768, heads=12, layers=12)}
# steps, peak lr (Devlin et al. fine-tune at 2e-5..5e-5 with big batches;
# small models on small data want more)
TASKS = {"pretrain": (2000, 1e-3), "classify": (400, 1e-4)}


def get_config(arg=None):
  task, rest = parse_variant(arg, TASKS, "pretrain")
  arg = parse_arg(rest, size="tiny", steps=0, runlocal=False, pod=False)
  check(arg.size in SIZES, "arg.size", f"unknown size {arg.size!r}",
        f"use one of {sorted(SIZES)}")
  steps, lr = TASKS[task]
  steps = arg.steps or steps
  c = common("mlm", total_steps=steps, batch_size=32, log_every=25,
             eval_every=steps, ckpt_every=100,
             optim=dict(name="adamw", lr=lr, warmup_steps=steps // 10,
                        schedule="linear", b2=0.999, weight_decay=0.01,
                        clip_norm=1.0))
  c.task = task
  c.init_from = ""  # classify: workdir of a pretrain run
  c.mask_rate = 0.15
  c.data = ml_collections.ConfigDict(dict(
      source="shakespeare", folder="", data_dir="", text_key="text",
      train_split="train", eval_split="validation",
      test_split="test", vocab_size=4000, seq_len=128))
  d_model, heads, layers = (SIZES[arg.size][k] for k in ("d_model", "heads", "layers"))
  c.model = ml_collections.ConfigDict(dict(
      d_model=d_model, num_heads=heads, d_ff=4 * d_model, num_layers=layers,
      dropout=0.1, implementation="xla",
      scan=False, remat="none",  # nn.scan over layers; remat none | full | dots
      dtype="float32"))  # activations and matmul inputs; bfloat16 on TPUs
  if arg.pod:
    c.batch_size = 256
    for_pods(c, EMBEDDINGS_BY_COLUMNS)  # bfloat16 compute, float32 state split
    c.data.update(vocab_size=30_522, seq_len=512)
  if arg.runlocal:
    c.total_steps = 4
    c.batch_size = 8
    c.log_every = c.eval_every = c.ckpt_every = 2
    c.model.update(d_model=16, num_heads=2, d_ff=32, num_layers=1)
    c.data.update(vocab_size=300, seq_len=32)
    c.optim.warmup_steps = 0
  return c
