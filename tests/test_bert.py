"""BERT pretraining and fine-tuning (experiments/mlm.py) on play-like text
named after real plays, so every genre and the held-out split are present
without fetching Shakespeare."""
import os

import jax
import numpy as np
import pytest

from attnlab import checkpoint as ckpt_lib
from attnlab import main as main_lib
from attnlab import metrics as metrics_lib
from attnlab.data import text as text_lib
from experiments import mlm

from conftest import make_text

PLAYS = {"train": ("lear", "john", "as_you_like_it", "sonnets"),
         "validation": ("macbeth", "tempest"), "test": ("hamlet", "twelfth_night")}


@pytest.fixture
def fake_plays(monkeypatch, tmp_path):
  def load_documents(data, split):
    return [(name, make_text(6_000, seed=i)) for i, name in enumerate(PLAYS[split])]
  monkeypatch.setattr(text_lib, "load_documents", load_documents)
  from attnlab.data import catalog
  monkeypatch.setattr(catalog, "prepare", lambda data: None)  # no fetching in tests
  return [f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.batch_size=8"]


def test_passages_frame_each_play_with_cls_and_sep():
  class Chars:  # a stand-in tokenizer: one id per character
    def encode(self, line):
      return [4 + ord(c) % 50 for c in line]
  docs = [("a", "ab\ncdefg"), ("b", "xyz")]
  tokens, doc = mlm.passages(Chars(), docs, seq_len=5)
  np.testing.assert_array_equal(doc, [0, 0, 0, 1])
  assert (tokens[:, 0] == mlm.CLS).all()
  body = [t[1:][t[1:] > 0][:-1] for t in tokens]   # drop [CLS], padding, [SEP]
  assert all(t[1:][t[1:] > 0][-1] == mlm.SEP for t in tokens)
  enc = Chars().encode
  np.testing.assert_array_equal(np.concatenate(body[:3]), enc("ab") + enc("cdefg"))
  np.testing.assert_array_equal(body[3], enc("xyz"))


def test_pretrain_then_fine_tune_from_its_checkpoint(tmp_path, fake_plays, capsys):
  """The classifier starts from every pretrained weight but its new head;
  a different model size is refused; both runs report accuracy."""
  pre = str(tmp_path / "pre")
  main_lib.main(["train", "--config", "configs/bert.py:pretrain,runlocal=True",
                 "--workdir", pre, *fake_plays])
  out = capsys.readouterr().out
  assert "masked words [model's guess]" in out
  rows = metrics_lib.read_jsonl(os.path.join(pre, "metrics.jsonl"))
  assert 0 <= [r["eval/accuracy"] for r in rows if "eval/accuracy" in r][-1] <= 1

  config, _ = main_lib.parse_config(["--config", "configs/bert.py:classify,runlocal=True",
                                     "--workdir", str(tmp_path / "ft"), *fake_plays,
                                     f"--config.init_from={pre}"])
  exp = mlm.Experiment(config, str(tmp_path / "ft"))
  fresh = jax.jit(exp.init, static_argnums=1)(jax.random.PRNGKey(5), 2)["params"]
  loaded, _ = ckpt_lib.load_variables(pre)
  params, _, source = exp.pretrained(fresh, {})
  assert source == pre and set(params) == set(fresh)
  for name in loaded:
    jax.tree.map(np.testing.assert_array_equal, params[name], loaded[name])
  assert not np.allclose(fresh["layer_0"]["ffn"]["wi"]["kernel"],
                         loaded["layer_0"]["ffn"]["wi"]["kernel"])
  assert params["classifier"] is fresh["classifier"]

  config.model.d_model = 32
  with pytest.raises(ValueError, match="different model"):
    mlm.Experiment(config, str(tmp_path / "ft")).pretrained(
        jax.eval_shape(lambda k: mlm.Experiment(config, None).init(k, 2),
                       jax.random.PRNGKey(0))["params"], {})

  ft = str(tmp_path / "ft")
  main_lib.main(["train", "--config", "configs/bert.py:classify,runlocal=True",
                 "--workdir", ft, *fake_plays, f"--config.init_from={pre}"])
  out = capsys.readouterr().out
  assert f"parameters from {pre}" in out and "macbeth" in out and "hamlet" in out
  for tag in ("validation_step4", "test_step4"):
    assert os.path.exists(os.path.join(ft, "plots", f"confusion_{tag}.png"))


def test_bad_fine_tuning_source_is_one_line(tmp_path, fake_plays, capsys):
  with pytest.raises(SystemExit):
    main_lib.main(["train", "--config", "configs/bert.py:classify,runlocal=True",
                   "--workdir", str(tmp_path / "x"), *fake_plays,
                   f"--config.init_from={tmp_path / 'missing'}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "init_from" in err[0] and "pretrain" in err[0]


@pytest.mark.parametrize("task", ["pretrain", "classify"])
def test_analytic_flops_match_xla_cost_analysis(fake_plays, task):  # noqa: F811
  """mlm.flops_per_step is 3x the forward; XLA's count of the compiled
  forward (the MLM head and output, or the pooler and classifier) matches
  the analytic forward up to elementwise ops (a few percent at this width)."""
  config, _ = main_lib.parse_config(["--config", f"configs/bert.py:{task},runlocal=True",
                                     *fake_plays])
  config.model.update(d_model=64, num_heads=4, d_ff=256, num_layers=2)
  exp = mlm.Experiment(config, None)
  tokens = np.ones((2, config.data.seq_len), np.int32)
  params = exp.model.init(jax.random.PRNGKey(0), tokens, tokens > 0)
  # the output the loss reads (XLA drops the rest)
  used = (lambda out: out[1]["classes"]) if task == "classify" else (lambda out: out[0])
  cost = jax.jit(lambda p: used(exp.model.apply(p, tokens, tokens > 0))).lower(
      params).cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  forward = exp.flops_per_step(2) / 3
  assert forward <= cost <= 1.1 * forward, (forward, cost)


def test_pretraining_learns_what_the_data_allows(tmp_path, fake_plays, capsys):  # noqa: F811
  """The fake plays are random words, so a masked word is barely more
  predictable than its frequency: a working objective reaches about the
  majority token's share of the validation tokens (computed from the data);
  one that trains nothing stays near 1/vocabulary, and one that leaks the
  chosen token into the input copies it (accuracy near 1)."""
  wd = str(tmp_path / "pre")
  main_lib.main(["train", "--config", "configs/bert.py:pretrain,runlocal=True",
                 "--workdir", wd, *fake_plays, "--config.total_steps=60",
                 "--config.eval_every=60", "--config.optim.lr=1e-2",
                 "--config.model.d_model=32", "--config.model.d_ff=64",
                 '--config.mesh=(("data", 1),)', "--config.mesh_subset=True"])
  rows = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
  accuracy = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r][-1]
  exp = mlm.Experiment(main_lib.load_run(wd), wd)
  tokens = exp.split("validation")[0]
  regular = tokens[(tokens >= mlm.FIRST_REGULAR)]
  majority = np.bincount(regular).max() / len(regular)
  assert majority > 10 / exp.mask_id  # the bound is far above a model that learned nothing
  assert 0.8 * majority <= accuracy <= 0.5, (accuracy, majority)
