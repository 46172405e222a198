"""Config arguments, overrides, and the catalogue of bad inputs: each gives
one clear line on stderr and exit code 2, before anything compiles."""
import os

import pytest

from attnlab import config as config_lib
from attnlab import main as main_lib
from configs import charlm
from conftest import tiny_overrides
from helpers import run_cli

CONFIG = "configs/charlm.py:runlocal=True"


def test_parse_arg_types_and_defaults():
  arg = config_lib.parse_arg("cell=gru,steps=5,runlocal=True", cell="lstm",
                             steps=0, runlocal=False, lr=1.0)
  assert (arg.cell, arg.steps, arg.runlocal, arg.lr) == ("gru", 5, True, 1.0)
  assert config_lib.parse_arg("lr=3", lr=1.0).lr == 3.0


def test_equal_parameter_count_across_cells():
  """hidden sizes are chosen so rnn/gru/lstm have the same parameter count."""
  import jax
  from experiments import lm
  counts = {}
  for cell in ("rnn", "gru", "lstm"):
    c = charlm.get_config(f"cell={cell},size=medium")
    model = lm.rnn_lm.RNNLM(vocab_size=85, cell=cell, hidden=c.model.hidden,
                            num_layers=c.model.num_layers, embed=c.model.embed)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jax.numpy.zeros((1, 4), "int32"),
        model.zero_carry(1)))
    counts[cell] = sum(x.size for x in jax.tree.leaves(shapes))
  assert max(counts.values()) / min(counts.values()) < 1.03, counts


def test_override_keeps_type(tmp_path):
  config, _ = main_lib.parse_config(
      ["--config", "configs/charlm.py:cell=gru", "--config.optim.lr=3e-3",
       "--config.data.stateful=false", "--config.total_steps=7",
       '--config.mesh=(("data", 2),)'])
  assert config.optim.lr == 3e-3 and config.model.cell == "gru"
  assert config.data.stateful is False and config.total_steps == 7
  assert tuple(map(tuple, config.mesh)) == (("data", 2),)


def bad_folder(tmp_path, kind):
  d = tmp_path / kind
  d.mkdir()
  if kind == "binary":
    (d / "a.txt").write_bytes(b"abc\0\1\2" * 100)
  elif kind == "latin1":
    (d / "a.txt").write_bytes("caf\xe9 au lait".encode("latin-1") * 100)
  elif kind == "tiny":
    (d / "a.txt").write_text("too short")
  elif kind in ("train_only", "validation_only"):
    sub = d / kind.split("_")[0]
    sub.mkdir()
    (sub / "a.txt").write_text("text " * 1000)
  return str(d)


BAD = [
    # (id, extra args, words the one line must contain)
    ("unknown_key", ["--config.optim.lrr=1"], ["optim.lrr", "unknown key"]),
    ("unknown_group", ["--config.nope.x=1"], ["nope.x", "unknown key"]),
    ("wrong_type", ["--config.optim.lr=abc"], ["optim.lr", "not a float"]),
    ("float_for_int", ["--config.total_steps=1.5"], ["total_steps", "not a int"]),
    ("unexpected_arg", ["--lr=3"], ["unexpected argument"]),
    ("no_value", ["--config.seed"], ["--config.KEY=VALUE"]),
    ("negative_lr", ["--config.optim.lr=-1"], ["optim.lr", "must be > 0"]),
    ("zero_steps", ["--config.total_steps=0"], ["total_steps", "> 0"]),
    ("indivisible_batch", ["--config.batch_size=12"],
     ["batch_size", "not divisible by 8 devices"]),
    ("indivisible_accum", ["--config.grad_accum=3"],
     ["batch_size", "accumulation"]),
    ("bad_mesh", ['--config.mesh=(("data", 3),)'], ["mesh", "multiple of 3"]),
    ("mesh_leaves_devices_idle", ['--config.mesh=(("data", 2), ("model", 2))'],
     ["mesh", "multiplies to 4 devices, 8 are available", "mesh_subset=True"]),
    ("bad_cell_override", ["--config.model.cell=transformer"],
     ["model.cell", "not one of"]),
    ("bad_dropout", ["--config.model.dropout=1.5"], ["model.dropout"]),
    ("bad_schedule", ["--config.optim.schedule=triangle"], ["optim.schedule"]),
    ("bad_seq_len", ["--config.data.seq_len=1"], ["data.seq_len"]),
    ("unknown_source", ["--config.data.source=no_such_dataset_xyz"],
     ["data.source", "not a known tfds dataset"]),
    ("folder_without_source", ["--config.data.folder=/nonexistent"],
     ["data.folder", "data.source=folder"]),
    ("missing_folder", ["--config.data.source=folder",
                        "--config.data.folder=/nonexistent/dir"],
     ["data.folder", "does not exist"]),
    ("empty_folder", "empty", ["data.folder", "no .txt files"]),
    ("binary_folder", "binary", ["data.folder", "binary"]),
    ("latin1_folder", "latin1", ["data.folder", "not UTF-8"]),
    ("bad_config_arg", ["--config", "configs/charlm.py:cel=gru"],
     ["arg.cel", "unknown config arg"]),
    ("bad_config_arg_value", ["--config", "configs/charlm.py:size=huge"],
     ["arg.size", "unknown size"]),
    ("missing_config_file", ["--config", "configs/nope.py"], ["nope.py"]),
    ("no_workdir", None, ["--workdir is required"]),
    ("seq2seq_layers", ["--config", "configs/seq2seq.py:runlocal=True",
                        "--config.model.num_layers=0"], ["model.num_layers", ">= 1"]),
    ("seq2seq_model", ["--config", "configs/seq2seq.py:model=attentive"],
     ["model.model", "not one of"]),
    ("seq2seq_transformer", ["--config", "configs/seq2seq.py:model=transformer"],
     ["model.model", "configs/wmt.py"]),
    ("seq2seq_beam", ["--config", "configs/seq2seq.py:runlocal=True",
                      "--config.decode.beam=0"], ["decode.beam", ">= 1"]),
    ("beam_over_vocabulary", ["--config", "configs/wmt.py:ding,runlocal=True",
                              "--config.decode.beam=65"],
     ["decode.beam", "65 hypotheses exceed the 64-piece vocabulary"]),
    ("negative_length_penalty", ["--config", "configs/seq2seq.py:runlocal=True",
                                 "--config.decode.alpha=-0.5"], ["decode.alpha", "alpha >= 0"]),
    ("no_room_to_decode", ["--config", "configs/wmt.py:ding,runlocal=True",
                           "--config.decode.extra_len=-32"],
     ["decode.extra_len", "max length", "< 1"]),
    ("sample_nothing", ["--config", "configs/gpt.py:runlocal=True", "--config.sample.length=0"],
     ["sample.length", "nothing to sample"]),
    ("wmt_heads", ["--config", "configs/wmt.py:ding,runlocal=True",
                   "--config.model.num_heads=3"], ["model.d_model", "not divisible"]),
    ("wmt_variant", ["--config", "configs/wmt.py:huge"], ["unknown variant", "ding"]),
    ("unknown_prng", ["--config", "configs/charlm.py:runlocal=True",
                      "--config.prng_impl=philox"], ["prng_impl", "'philox'", "rbg"]),
    ("unknown_remat_policy", ["--config", "configs/gpt.py:runlocal=True",
                              "--config.model.remat=some"],
     ["model.remat", "'some'", "dots", "full", "none"]),

    ("seq2seq_folder", ["--config", "configs/seq2seq.py:data=folder",
                        "--config.data.folder=/nonexistent"],
     ["data.folder", "de.train.txt is missing", "data.src_lang", "data.tgt_lang"]),
    ("seq2seq_language", ["--config", "configs/seq2seq.py:runlocal=True",
                          "--config.data.src_lang=fr"],
     ["data.src_lang", "'fr' is not a language of ding", "['de', 'en']"]),
    ("warmup_past_the_end", ["--config.total_steps=10", "--config.optim.warmup_steps=10"],
     ["optim.warmup_steps", "not below total_steps=10"]),
    ("bad_rule_regex", ["--config.optim.frozen=('embed[',)"], ["optim.frozen", "bad regex"]),
    ("bad_rule_shape", ["--config.optim.lr_mults=(('head/.*',),)"],
     ["optim.lr_mults", "(regex, multiplier >= 0) pair"]),
    ("bad_wd_schedule", ["--config.optim.wd_schedule=step"], ["optim.wd_schedule"]),
    ("workdir_scheme_unknown", ["--workdir", "gcs://bucket/run"],
     ["workdir", "'gcs://bucket/run'", "no storage backend", "gs://"]),
    ("workdir_scheme_not_installed", ["--workdir", "s3://bucket/run"],
     ["workdir", "s3:// paths cannot be read here", "s3fs"]),
    ("data_folder_scheme_unknown", ["--config.data.source=folder",
                                    "--config.data.folder=gcs://bucket/text"],
     ["data.folder", "gcs://", "no storage backend"]),
    ("train_without_test", "train_only", ["data.folder", "no test/"]),
    ("validation_alone", "validation_only", ["data.folder", "validation/", "no train/"]),
]


@pytest.mark.parametrize("case,extra,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_clear_line(tmp_path, capsys, case, extra, words):
  argv = ["train", "--config", CONFIG, "--workdir", str(tmp_path / "w")]
  if isinstance(extra, str):
    extra = ["--config.data.source=folder",
             f"--config.data.folder={bad_folder(tmp_path, extra)}"]
  elif extra is None:
    argv = argv[:3]
    extra = []
  if extra and extra[0] == "--config":
    argv[2] = extra[1]
    extra = extra[2:]
  with pytest.raises(SystemExit) as e:
    main_lib.main(argv + extra)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert err.startswith("error: ") and "Traceback" not in err, err
  for w in words:
    assert w in err, (w, err)
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_a_broken_config_file_is_one_line_naming_its_error(tmp_path, capsys):
  path = tmp_path / "broken.py"
  path.write_text("def get_config(arg=None):\n  return {'lr': 1 / 0}\n")
  with pytest.raises(SystemExit) as e:
    main_lib.main(["train", "--config", str(path), "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err.strip()
  assert e.value.code == 2 and len(err.splitlines()) == 1, err
  assert f"--config {path}: ZeroDivisionError" in err and "Traceback" not in err, err


def test_text_too_short_for_the_batch(tmp_path, capsys):
  folder = bad_folder(tmp_path, "tiny")
  with pytest.raises(SystemExit) as e:
    main_lib.main(["train", "--config", CONFIG, "--workdir", str(tmp_path / "w"),
                   "--config.data.source=folder", f"--config.data.folder={folder}"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert "data" in err and "too short" in err and len(err.splitlines()) == 1


def test_workdir_of_another_config_is_refused(tmp_path, text_folder, capsys):
  wd = str(tmp_path / "w")
  main_lib.main(["train", "--config", CONFIG, "--workdir", wd,
                 *tiny_overrides(text_folder, total_steps=1)])
  with pytest.raises(SystemExit) as e:
    main_lib.main(["train", "--config", CONFIG, "--workdir", wd,
                   *tiny_overrides(text_folder, total_steps=1),
                   "--config.optim.lr=0.5"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "another config" in err and "optim.lr: run 0.002, now 0.5" in err, err


@pytest.mark.parametrize("rule, words", [
    ("--config.optim.lr_mults=(('haed/.*', 10.0),)", ["optim.lr_mults", "'haed/.*' matches no parameter"]),
    ("--config.optim.frozen=('.*',)", ["optim.frozen", "freezes every parameter"]),
    ("--config.param_sharding=(('.*kernal', ('data',)),)",
     ["param_sharding", "'.*kernal' matches no parameter", "names look like"]),
    ("--config.param_sharding=(('.*kernel', ('model',)),)",
     ["param_sharding", "names mesh axis 'model'", "('data',)"]),
    ("--config.param_sharding=(('.*[', ('data',)),)", ["param_sharding", "bad regex"]),
])
def test_optimizer_and_sharding_rules_that_fit_no_parameter(tmp_path, text_folder, capsys, rule, words):
  """Found from the model's parameter names, before anything compiles."""
  with pytest.raises(SystemExit) as e:
    main_lib.main(["train", "--config", CONFIG, "--workdir", str(tmp_path / "w"),
                   *tiny_overrides(text_folder, total_steps=1), rule])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and all(w in err for w in words), err
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_sample_without_a_run(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    main_lib.main(["sample", str(tmp_path)])
  assert e.value.code == 2
  assert "no config.json" in capsys.readouterr().err


def test_exit_code_2_from_the_command_line():
  rc, out = run_cli("train", "--config", CONFIG, "--workdir", "/tmp/x",
                    "--config.optim.lr=-3")
  assert rc == 2
  assert out.strip().splitlines()[-1].startswith("error: config.optim.lr")


def test_every_pod_recipes_sharding_rules_fit_its_parameters():
  """Each pod recipe's param_sharding (config.for_pods and the recipe's own
  rules) names parameters the model has: checked on its shapes, before a
  TPU compile would take minutes to say so."""
  import jax
  from attnlab import main as main_lib
  from attnlab import sharding
  from benchmarks import pods
  mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  for name, (spec, _, overrides) in pods.RECIPES.items():
    config, _ = main_lib.parse_config(["--config", spec, *overrides])
    exp = main_lib.experiment_module(config).Experiment(config, None, read_data=False)
    variables = jax.eval_shape(lambda r: exp.init(r, 2), jax.random.PRNGKey(0))
    sharding.check_rules(config.param_sharding, variables, mesh)  # raises ConfigError
    assert config.model.dtype == ("float32" if "float32" in name else "bfloat16"), name
