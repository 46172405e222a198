"""The char-LM experiment's analysis: interpretable-cell search."""
import json
import os

import jax
import numpy as np

from attnlab import main as main_lib
from conftest import tiny_overrides
from experiments import lm


def test_streaming_correlation_matches_numpy():
  rng = np.random.default_rng(1)
  acts = rng.normal(size=(300, 5))
  values = (acts[:, 1] > 0).astype(float) + rng.normal(size=300) * 0.1
  stream = lm.StreamingCorrelation()
  for start in range(0, 300, 70):
    stream.update(acts[start:start + 70], values[start:start + 70])
  want = [np.corrcoef(acts[:, j], values)[0, 1] for j in range(5)]
  np.testing.assert_allclose(stream.result(), want, rtol=1e-9)
  assert int(np.argmax(np.abs(stream.result()))) == 1
  constant = lm.StreamingCorrelation()
  constant.update(acts, np.zeros(300))
  assert constant.result() is None


def test_text_features():
  f = lm.text_features('ab "cd" e\nfg')
  np.testing.assert_array_equal(f["position_in_line"],
                                [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
  np.testing.assert_array_equal(f["inside_quotes"],
                                [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_eval_test_split_writes_cell_figures_and_ranks_cells(tmp_path, text_folder, capsys):
  wd = str(tmp_path / "run")
  main_lib.main(["train", "--config", "configs/charlm.py:runlocal=True",
                 "--workdir", wd, *tiny_overrides(text_folder, total_steps=3)])
  for name in os.listdir(os.path.join(wd, "plots")):
    os.remove(os.path.join(wd, "plots", name))
  capsys.readouterr()
  main_lib.main(["eval", wd, "--split", "test"])
  out = capsys.readouterr().out
  assert "test/loss" in out and "position_in_line: best cells #" in out
  for name in ("inside_quotes", "position_in_line", "inside_brackets"):
    assert os.path.getsize(os.path.join(wd, "plots", f"cell_{name}.png")) > 1000
    assert os.path.exists(os.path.join(wd, "plots", f"cell_{name}.html"))


def test_gpt_trains_evaluates_and_samples_from_the_cli(tmp_path, text_folder, capsys):
  """The decoder-only Transformer through the same experiment: held-out
  loss falls below a uniform guess, and `sample` continues the prompt with
  the key/value cache (greedy sampling is reproducible)."""
  from attnlab import metrics as metrics_lib
  wd = str(tmp_path / "gpt")
  main_lib.main(["train", "--config", "configs/gpt.py:runlocal=True", "--workdir", wd,
                 *tiny_overrides(text_folder, total_steps=30, eval_every=30)])
  rows = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
  vocab = len(json.load(open(os.path.join(wd, "vocab.json")))["chars"])
  assert [r["eval/loss"] for r in rows if "eval/loss" in r][-1] < np.log(vocab)
  outs = []
  for _ in range(2):
    capsys.readouterr()
    main_lib.main(["sample", wd, "--prompt", "KING:", "--length", "30",
                   "--temperature", "0"])
    outs.append(capsys.readouterr().out)
  assert outs[0] == outs[1] and outs[0].startswith("KING:")
  assert len(outs[0].rstrip("\n")) >= len("KING:") + 25


def test_gpt_analytic_flops_match_xla_cost_analysis(text_folder):
  """lm.flops_per_step for the GPT (no scan: XLA counts everything) is a
  third of a train step: the forward, which XLA's count of the compiled
  forward matches up to its elementwise ops (a few percent at this width)."""
  from configs import gpt
  config = gpt.get_config("runlocal=True")
  config.data.update(source="folder", folder=text_folder, seq_len=32)
  config.model.update(d_model=64, num_heads=4, d_ff=256, num_layers=2)
  exp = lm.Experiment(config, None)
  tokens = np.zeros((2, 32), np.int32)
  params = exp.model.init(jax.random.PRNGKey(0), tokens)
  cost = jax.jit(lambda p: exp.model.apply(p, tokens)).lower(params).cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  forward = exp.flops_per_step(2) / 3
  assert forward <= cost <= 1.1 * forward, (forward, cost)
