"""Character-level RNN language model on Shakespeare (Karpathy's char-rnn).

Command:
  ./launch.sh train configs/charlm.py --workdir runs/charlm
Variants (`key=value,...` after the colon):
  cell=lstm|gru|rnn      flax cell; hidden size is set so all three have the
                         same parameter count at a given `size`
  size=tiny|small|medium LSTM hidden 32 / 256 / 512, two layers
  steps=N                training steps (default: the size's budget)
  runlocal=True          a few steps on a tiny model, for smoke tests
Override anything else: --config.optim.lr=3e-3 --config.data.seq_len=64

Expected on a 2-core CPU (measured; docs/charlm.md):
  small LSTM, default 600 steps: 1.93 held-out nats/char, 7.5 minutes in all;
  small, steps=1800 (~19 minutes): LSTM 1.62, GRU 1.53, vanilla RNN 1.63.
Bring your own text: --config.data.source=folder --config.data.folder=DIR
"""
import math

import ml_collections

from attnlab.config import check, common, parse_arg
from attnlab.nn.rnn import GATES

LSTM_HIDDEN = {"tiny": 32, "small": 256, "medium": 512}
STEPS = {"tiny": 200, "small": 600, "medium": 1200}


def get_config(arg=None):
  arg = parse_arg(arg, cell="lstm", size="small", steps=0, runlocal=False)
  check(arg.size in LSTM_HIDDEN, "arg.size", f"unknown size {arg.size!r}",
        f"use one of {sorted(LSTM_HIDDEN)}")
  check(arg.cell in GATES, "arg.cell", f"unknown cell {arg.cell!r}",
        f"use one of {sorted(GATES)}")
  c = common("lm", total_steps=arg.steps or STEPS[arg.size], batch_size=32,
             log_every=25, eval_every=200, ckpt_every=100,
             optim=dict(lr=2e-3, warmup_steps=50, clip_norm=5.0))
  c.data = ml_collections.ConfigDict(dict(
      source="shakespeare", folder="", data_dir="", text_key="text",
      train_split="train", eval_split="validation",
      test_split="test", holdout=0.05, seq_len=128,
      stateful=True, eval_chars=120_000))

  # Equal parameter count: a layer has gates * (H * (H + X) + H) weights,
  # so H scales with sqrt(4 / gates) relative to the LSTM.
  lstm_hidden = LSTM_HIDDEN[arg.size]
  hidden = int(round(lstm_hidden * math.sqrt(4 / GATES[arg.cell]) / 8) * 8)
  c.model = ml_collections.ConfigDict(dict(
      name="rnn_lm", cell=arg.cell, hidden=hidden,
      num_layers=2, embed=64, dropout=0.0, dtype="float32"))
  # prompt "": the first line of the held-out text, whatever the data is
  c.sample = ml_collections.ConfigDict(dict(prompt="", length=400, temperature=0.8))

  if arg.runlocal:
    c.total_steps = arg.steps or 6
    c.batch_size = 8
    c.log_every = c.eval_every = c.ckpt_every = 3
    c.model.hidden, c.model.embed = 16, 8
    c.data.seq_len = 16
    c.data.eval_chars = 2_000
    c.sample.length = 40
    c.optim.warmup_steps = 0
  return c
