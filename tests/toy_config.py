"""Config of tests/toy_experiment.py (BatchNorm state, EMA hook)."""
import ml_collections

from attnlab.config import common


def get_config(arg=None):
  del arg
  c = common("tests.toy_experiment", total_steps=200, batch_size=32, log_every=1,
             eval_every=0, ckpt_every=20, optim=dict(lr=0.05, warmup_steps=0, clip_norm=0.0))
  c.ema_momentum = 0.9
  c.init_from = ""
  c.data = ml_collections.ConfigDict(dict(source="folder", folder="",
                                          eval_split="train", test_split="train"))
  return c
