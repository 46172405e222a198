"""Decoder-only Transformer language model (GPT) on Shakespeare characters,
the same data, vocabulary and held-out plays as configs/charlm.py.

Command:
  ./launch.sh train configs/gpt.py --workdir runs/gpt
  ./launch.sh sample runs/gpt --prompt "ROMEO:" --temperature 0.8
Variants: size=tiny|small|medium, steps=N, runlocal=True, pod=True.
pod=True: GPT-2's training shape (Radford et al. 2019): 512 windows of 1,024
tokens per step (0.5 M tokens), 1,024 learned positions, bfloat16 compute; meant for
size=medium on a v5e-64:
  ./launch.sh compile configs/gpt.py:size=medium,pod=True --tpu v5e-64
GPT-2's layout: pre-norm layers with GELU, learned positions, a final
LayerNorm, output tied to the embedding; Adam with warm-up and cosine decay.
Each training window (seq_len characters) is its own context.
"""
import ml_collections

from attnlab.config import EMBEDDINGS_BY_COLUMNS, check, common, for_pods, parse_arg

# "medium" is GPT-2 medium's stack (24 layers, d_model 1024), for pods and
# for `./launch.sh compile` of a deep model (memory with model.scan/remat).
SIZES = {"tiny": dict(d_model=64, heads=4, layers=2),
         "small": dict(d_model=192, heads=6, layers=4),
         "medium": dict(d_model=1024, heads=16, layers=24)}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", steps=1500, runlocal=False, pod=False)
  check(arg.size in SIZES, "arg.size", f"unknown size {arg.size!r}",
        f"use one of {sorted(SIZES)}")
  c = common("lm", total_steps=arg.steps, batch_size=32, log_every=25,
             eval_every=500, ckpt_every=100,
             optim=dict(lr=1e-3, warmup_steps=100, clip_norm=1.0, b2=0.99))
  c.data = ml_collections.ConfigDict(dict(
      source="shakespeare", folder="", data_dir="", text_key="text",
      train_split="train", eval_split="validation",
      test_split="test", holdout=0.05, seq_len=256,
      stateful=False, eval_chars=120_000))
  d_model, heads, layers = (SIZES[arg.size][k] for k in ("d_model", "heads", "layers"))
  c.model = ml_collections.ConfigDict(dict(
      name="gpt", d_model=d_model, num_heads=heads, d_ff=4 * d_model,
      num_layers=layers, max_len=512, dropout=0.1,
      implementation="xla",  # naive | xla | chunked (memory-efficient)
      scan=False, remat="none",  # nn.scan over layers; remat none | full | dots
      dtype="float32"))  # activations and matmul inputs; bfloat16 on TPUs
  if arg.pod:
    # windows of 1,024 tokens: 1,023 inputs, each predicting the next
    c.batch_size, c.data.seq_len, c.model.max_len = 512, 1023, 1024
    # Unscanned, the 24 layers' activations need 18.9 GiB of temporaries
    # per v5e chip (16 GiB): one layer compiled, its activations recomputed.
    c.model.update(scan=True, remat="full")
    for_pods(c, EMBEDDINGS_BY_COLUMNS)  # bfloat16 compute, float32 state split
  # prompt "": the first line of the held-out text, whatever the data is
  c.sample = ml_collections.ConfigDict(dict(prompt="", length=400, temperature=0.8))
  if arg.runlocal:
    c.total_steps = 6
    c.batch_size = 8
    c.log_every = c.eval_every = c.ckpt_every = 3
    c.model.update(d_model=16, num_heads=2, d_ff=32, num_layers=1, max_len=64)
    c.data.seq_len = 16
    c.data.eval_chars = 2_000
    c.sample.length = 40
    c.optim.warmup_steps = 0
  return c
