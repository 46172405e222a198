"""The trainer end to end, in process, on 8 fake CPU devices."""
import json
import os

import jax
import numpy as np
import pytest

from attnlab import cost
from attnlab import main as main_lib
from attnlab import metrics as metrics_lib
from conftest import tiny_overrides
from helpers import assert_trees_equal, load_state

CONFIG = "configs/charlm.py:runlocal=True"


def train(workdir, folder, *extra, config=CONFIG, **overrides):
  main_lib.main(["train", "--config", config, "--workdir", str(workdir),
                 *tiny_overrides(folder, **overrides), *extra])
  return load_state(workdir)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_one_step_smoke_per_config(tmp_path, text_folder, cell):
  state = train(tmp_path / cell, text_folder, config=f"{CONFIG},cell={cell}",
                total_steps=1)
  assert int(state["step"]) == 1
  rows = metrics_lib.read_jsonl(os.path.join(tmp_path, cell, "metrics.jsonl"))
  assert rows[0]["step"] == 1
  for key in ("train/loss", "train/lr", "train/grad_norm", "train/param_norm",
              "train/tokens_per_sec", "train/mfu", "eval/loss"):
    assert np.isfinite(rows[0][key]), key
  # The logged parameter norm is that of the parameters the step produced.
  norm = np.sqrt(sum(float(np.sum(np.square(x, dtype=np.float64)))
                     for x in jax.tree.leaves(state["params"])))
  assert rows[0]["train/param_norm"] == pytest.approx(norm, rel=1e-5)
  # An untrained model predicts ~uniformly: loss ~ log(vocab size).
  vocab = json.load(open(tmp_path / cell / "vocab.json"))["chars"]
  assert abs(rows[0]["train/loss"] - np.log(len(vocab))) < 0.25


def test_workdir_contents_and_learning(tmp_path, text_folder):
  wd = tmp_path / "run"
  train(wd, text_folder, total_steps=60, log_every=10, eval_every=30,
        ckpt_every=10, **{"optim.lr": 1e-2, "optim.warmup_steps": 0})
  for name in ("config.json", "metrics.jsonl", "vocab.json",
               "plots/curves.png", "samples/step_60.txt"):
    assert os.path.exists(wd / name), name
  assert sorted(os.listdir(wd / "checkpoints")) == ["40", "50", "60"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd / "tb"))
  rows = metrics_lib.read_jsonl(str(wd / "metrics.jsonl"))
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses[-1] < losses[0] - 0.5  # it learns the toy text
  evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
  assert len(evals) == 2 and evals[-1] < evals[0]
  config = json.load(open(wd / "config.json"))
  assert config["total_steps"] == 60 and config["data"]["source"] == "folder"


def test_tensorboard_events_readable(tmp_path, text_folder):
  from tensorboard.backend.event_processing import event_accumulator
  wd = tmp_path / "run"
  train(wd, text_folder, total_steps=3)
  acc = event_accumulator.EventAccumulator(str(wd / "tb"))
  acc.Reload()
  assert "train/loss" in acc.Tags()["scalars"]
  assert "curves" in acc.Tags()["images"]
  steps = [e.step for e in acc.Scalars("train/loss")]
  assert steps == [1, 3]


def test_eight_devices_equal_one_device(tmp_path, text_folder):
  """Same global batch on 1 and 8 devices, data parallel and FSDP (every
  parameter and its Adam moments split over the devices where a dimension
  divides): same loss and params after 5 steps, up to float reassociation."""
  one = train(tmp_path / "one", text_folder, "--config.mesh=((\"data\", 1),)", "--config.mesh_subset=True",
              total_steps=5, eval_every=0)
  eight = train(tmp_path / "eight", text_folder, total_steps=5, eval_every=0)
  fsdp = train(tmp_path / "fsdp", text_folder, "--config.param_sharding=(('.*', ('data',)),)",
               total_steps=5, eval_every=0)
  # ZeRO-3 with one gather per step: the parameters gathered whole, their
  # gradients split back for each device's share of the update.
  gathered = train(tmp_path / "gathered", text_folder, "--config.param_sharding=(('.*', ('data',)),)",
                   "--config.gather_params=True", total_steps=5, eval_every=0)
  assert jax.device_count() == 8
  for run in (fsdp, gathered):
    for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(run["params"])):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  # Only the order of the sums differs (8 partial sums of the batch, then an
  # all-reduce). Parameters stay below 1.3 in size, where a float32 ulp is
  # at most 2.4e-7; measured worst difference after 5 steps: 1.8e-7 (one
  # ulp). The bound is 4 ulps there; any real difference (a row on the
  # wrong device, a missing 1/8) is orders of magnitude larger.
  for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(eight["params"])):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  l1 = metrics_lib.read_jsonl(str(tmp_path / "one" / "metrics.jsonl"))
  l8 = metrics_lib.read_jsonl(str(tmp_path / "eight" / "metrics.jsonl"))
  np.testing.assert_allclose([r["train/loss"] for r in l1],  # ~4 ulps of a loss ~3.9
                             [r["train/loss"] for r in l8], rtol=2e-6)


def test_a_data_fsdp_model_mesh_equals_one_device(tmp_path, text_folder):
  """GPT on a 2 x 2 x 2 mesh: the batch split over data x fsdp (4 ways),
  each model-axis pair seeing the same rows, every kernel split by rows over
  fsdp and by columns over model; the same parameters after 5 steps as one
  device. Plain 8-way data parallelism differs from one device by 6e-5
  here (Adam divides each update by its gradient's own size, so summation
  order shows); a row on the wrong device or a missing 1/2 moves them by
  1e-2 or more."""
  gpt = ("configs/gpt.py:size=tiny,runlocal=True",)
  run = lambda name, *extra: train(tmp_path / name, text_folder, "--config.model.dropout=0.0",
                                   *extra, config=gpt[0], total_steps=5, eval_every=0)
  one = run("one", '--config.mesh=(("data", 1),)', "--config.mesh_subset=True")
  three = run("3d", '--config.mesh=(("data", 2), ("fsdp", 2), ("model", 2))',
              "--config.param_sharding=(('.*kernel', ('fsdp', 'model')),)")
  for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(three["params"])):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-4)
  # The batch really is split 4 ways, the model axis' two devices sharing rows.
  from attnlab import sharding as sharding_lib
  mesh = sharding_lib.make_mesh((("data", 2), ("fsdp", 2), ("model", 2)))
  rows = {d: i[0] for d, i in sharding_lib.batch_sharding(mesh).devices_indices_map((8,)).items()}
  assert sorted({(s.start, s.stop) for s in rows.values()}) == [(0, 2), (2, 4), (4, 6), (6, 8)]
  for pair in mesh.devices.reshape(4, 2):
    assert rows[pair[0]] == rows[pair[1]]
  assert sharding_lib.local_batch_size(8, mesh) == 8


def test_gradient_accumulation_equals_full_batch(tmp_path, text_folder):
  """Two micro-batches of 4 rows (each with its own slice of the carried
  state) give the same update as one batch of 8."""
  full = train(tmp_path / "full", text_folder, total_steps=4, eval_every=0)
  accum = train(tmp_path / "accum", text_folder, total_steps=4, eval_every=0,
                grad_accum=2, mesh_subset=True, **{"mesh": '(("data", 4),)'})
  for a, b in zip(jax.tree.leaves(full["params"]), jax.tree.leaves(accum["params"])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  for a, b in zip(jax.tree.leaves(full["carry"]), jax.tree.leaves(accum["carry"])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, text_folder,
                                                         capsys):
  wd = tmp_path / "run"
  with pytest.raises(SystemExit) as exit_info:
    train(wd, text_folder, total_steps=30, ckpt_every=1, log_every=1,
          eval_every=0, **{"optim.lr": 3e38, "optim.clip_norm": 0.0,
                           "optim.warmup_steps": 0})
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert "NaN/Inf at step" in err and "last good checkpoint" in err
  bad_step = int(err.split("NaN/Inf at step ")[1].split(";")[0])
  state = load_state(wd)
  assert int(state["step"]) < bad_step
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
  assert int(state["bad_step"]) == -1


def test_sampling_reproducible_under_seed(tmp_path, text_folder, capsys):
  wd = tmp_path / "run"
  train(wd, text_folder, total_steps=3)
  capsys.readouterr()
  outs = []
  for seed in (0, 0, 1):
    main_lib.main(["sample", str(wd), "--prompt", "KING:", "--length", "60",
                   "--seed", str(seed)])
    outs.append(capsys.readouterr().out)
  assert outs[0] == outs[1] and outs[0] != outs[2]
  assert outs[0].startswith("KING:") and len(outs[0].strip()) >= 60
  main_lib.main(["sample", str(wd), "--prompt", "KING:", "--length", "30",
                 "--temperature", "0"])
  greedy = capsys.readouterr().out
  main_lib.main(["sample", str(wd), "--prompt", "KING:", "--length", "30",
                 "--temperature", "0", "--seed", "7"])
  assert capsys.readouterr().out == greedy  # greedy ignores the seed
  with pytest.raises(SystemExit) as e:  # was: silently the config's length
    main_lib.main(["sample", str(wd), "--length", "0"])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == "error: --length 0: sample at least 1 character"


def test_default_source_smoke_on_tfds_mock_data(tmp_path):
  """The default config's own tfds source (Shakespeare) end to end, on
  tfds.testing.mock_data, so no test fetches anything."""
  import tensorflow_datasets as tfds
  wd = tmp_path / "run"
  with tfds.testing.mock_data(num_examples=60):
    main_lib.main(["train", "--config", CONFIG, "--workdir", str(wd),
                   "--config.total_steps=1",
                   f"--config.data.data_dir={tmp_path / 'tfds'}"])
  state = load_state(wd)
  assert int(state["step"]) == 1
  rows = metrics_lib.read_jsonl(str(wd / "metrics.jsonl"))
  assert np.isfinite(rows[-1]["eval/loss"])


def test_mfu_peak_published_for_accelerators_measured_on_cpu():
  """The MFU denominator: a chip's published peak in the model's dtype, the
  config's value when given, and 0 (measure) on a CPU."""
  import types
  import ml_collections
  def config(dtype, peak=0.0):
    return ml_collections.ConfigDict(dict(peak_flops=peak, model=dict(dtype=dtype)))
  dev = lambda kind: types.SimpleNamespace(device_kind=kind)
  assert cost.peak_flops(config("bfloat16"), dev("TPU v4"))[0] == 275e12
  assert cost.peak_flops(config("bfloat16"), dev("TPU v5 lite"))[0] == 197e12
  assert cost.peak_flops(config("bfloat16"), dev("TPU v5p"))[0] == 459e12
  assert cost.peak_flops(config("float32"), dev("NVIDIA A100-SXM4-80GB"))[0] == 156e12
  assert cost.peak_flops(config("bfloat16"), dev("NVIDIA H100 PCIe"))[0] == 756e12
  value, source = cost.peak_flops(config("bfloat16"), dev("NVIDIA H200"))
  assert value == 989e12 and "H200" in source and "bfloat16" in source
  assert cost.peak_flops(config("float32"), dev("cpu"))[0] == 0.0
  assert cost.peak_flops(config("float32", 5e9), dev("TPU v4")) == (5e9, "config.peak_flops")


def test_rbg_prng_trains_and_resumes(tmp_path, text_folder):
  """--config.prng_impl=rbg: the run's key is an rbg key (4 words, not
  threefry's 2), and a run cut back to its step-2 checkpoint resumes to the
  same parameters."""
  import shutil
  run = lambda: train(tmp_path, text_folder, "--config.prng_impl=rbg", total_steps=4,
                      ckpt_every=2, eval_every=0)
  try:
    whole = run()
    assert whole["rng"].shape == (4,) and int(whole["step"]) == 4
    shutil.rmtree(tmp_path / "checkpoints" / "4")  # as if killed after step 2's save
    resumed = run()
    assert int(resumed["step"]) == 4
    for a, b in zip(jax.tree.leaves(whole["params"]), jax.tree.leaves(resumed["params"])):
      np.testing.assert_array_equal(a, b)
  finally:
    jax.config.update("jax_default_prng_impl", "threefry2x32")


def _name(path):
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def test_a_parameter_rule_shards_its_adam_moments_alike(tmp_path, text_folder):
  """A rule written for parameter names (here a prefix, `embed/...`, which
  the optimizer state's own paths `.../mu/embed/...` do not start with)
  shards the parameter and its Adam moments mu and nu the same way; the
  step counts stay replicated; weight decay's mask (no decay on biases)
  leaves the state's structure as it is."""
  from attnlab import train as train_lib
  config, _ = main_lib.parse_config(
      ["--config", CONFIG, *tiny_overrides(text_folder),
       "--config.param_sharding=(('embed/.*', (None, 'data')), ('.*/kernel', (None, 'data')))",
       "--config.optim.weight_decay=0.1"])  # a masked transform in the state too
  exp = main_lib.experiment_module(config).Experiment(config, str(tmp_path))
  _, shardings = train_lib.Trainer(config, exp, str(tmp_path)).abstract_state()
  params = {_name(p): s.spec for p, s in
            jax.tree_util.tree_flatten_with_path(shardings["params"])[0]}
  sharded = [n for n, spec in params.items() if "data" in tuple(spec)]
  assert "embed/embedding" in sharded and "rnn/layer_0/cell/hf/kernel" in sharded, params
  moments = {"mu": 0, "nu": 0}
  for path, s in jax.tree_util.tree_flatten_with_path(shardings["opt_state"])[0]:
    name = _name(path)
    for moment in moments:
      if f"/{moment}/" in f"/{name}":
        param = name.split(f"{moment}/", 1)[1]
        assert s.spec == params[param], name
        moments[moment] += 1
        break
    else:
      assert s.spec == jax.sharding.PartitionSpec(), name  # counts, scalars
  assert moments == {"mu": len(params), "nu": len(params)}


def test_a_rule_shards_a_scanned_layer_like_an_unscanned_one():
  """Under a scanned stack the layers are stacked on a leading axis: the
  rule's spec applies from the second dimension on, so FSDP over `data`
  splits each layer's kernel the same way scanned or not (on 24 layers and
  16 devices the layer axis would not even divide)."""
  from attnlab import sharding as sharding_lib
  mesh = sharding_lib.make_mesh((("data", 8),))
  shape = lambda *s: jax.ShapeDtypeStruct(s, np.float32)
  params = {"encoder": {"layer_0": {"mlp": {"kernel": shape(16, 64)}},
                        "layer_scan": {"mlp": {"kernel": shape(3, 16, 64)}},
                        "norm": {"scale": shape(16)}}}
  out = sharding_lib.param_shardings(params, mesh, (("encoder/.*kernel", ("data", None)),))
  P = jax.sharding.PartitionSpec
  assert out["encoder"]["layer_0"]["mlp"]["kernel"].spec == P("data", None)
  assert out["encoder"]["layer_scan"]["mlp"]["kernel"].spec == P(None, "data", None)
  assert out["encoder"]["norm"]["scale"].spec == P()


def test_putting_batches_ahead_changes_nothing_but_timing(tmp_path, text_folder):
  """device_put_ahead 0 (each batch fetched when its step is due) and 2
  (two batches on the devices ahead of the step): the same batches in the
  same order, so the same parameters; the checkpointed input iterator is
  the one of the step's own batch (the kill -9 tests resume with 1)."""
  runs = [train(tmp_path / str(k), text_folder, f"--config.device_put_ahead={k}",
                total_steps=6, ckpt_every=3, eval_every=0) for k in (0, 2)]
  assert_trees_equal(runs[0]["params"], runs[1]["params"])
  import json as json_lib
  states = [json_lib.loads((tmp_path / str(k) / "checkpoints" / "3" / "data" /
                            "process_0-of-1.json").read_text()) for k in (0, 2)]
  assert states[0] == states[1]
