"""The trainer's state beyond params: BatchNorm statistics (model_state), a
post-update hook (an EMA of the updated params), the step in the loss
context, fine-tuning and averaging with model_state, and gradient
accumulation that averages per-token losses exactly. The objective is
tests/toy_experiment.py (config tests/toy_config.py)."""
import random
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import main as main_lib
from attnlab import metrics as metrics_lib
from attnlab import train as train_lib
from helpers import assert_trees_equal, load_state, run_cli
from test_resume import finished_checkpoints

TOY = "tests/toy_config.py"
STEPS, CKPT_EVERY = 200, 20  # tests/toy_config.py


def toy_args(workdir, *extra):
  return ["train", "--config", TOY, "--workdir", str(workdir), "--config.keep_ckpts=10",
          *extra]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("toy") / "ref"
  rc, out = run_cli(*toy_args(workdir))  # one device, as the killed run below
  assert rc == 0, out
  return workdir, load_state(workdir)


def test_batch_norm_state_resumes_bit_identically_after_kill_9(tmp_path, toy_run):
  from helpers import cli
  ref = toy_run[1]
  stats = ref["model_state"]["batch_stats"]["BatchNorm_0"]
  assert np.abs(stats["mean"]).max() > 0.1  # the statistics were updated
  kill_at = random.Random(3).randint(CKPT_EVERY + 2, STEPS // 2)
  wd = tmp_path / "killed"
  p = cli(*toy_args(wd))
  for line in p.stdout:  # the first step >= kill_at after a finished checkpoint
    if (line.startswith("step ") and int(line.split()[1].split("/")[0]) >= kill_at
        and finished_checkpoints(wd)):
      p.send_signal(signal.SIGKILL)
      break
  p.communicate(timeout=60)
  assert p.returncode == -signal.SIGKILL
  rc, out = run_cli(*toy_args(wd))
  assert rc == 0 and "resumed from checkpoint at step" in out, out
  assert_trees_equal(load_state(wd), ref)


def test_post_update_hook_sees_the_updated_params(tmp_path):
  """ema_t = m ema_{t-1} + (1 - m) params_t, params_t after update t."""
  config, _ = main_lib.parse_config(["--config", TOY])
  exp = main_lib.experiment_module(config).Experiment(config)
  trainer = train_lib.Trainer(config, exp, str(tmp_path))
  step = jax.jit(trainer.step_fn())
  data = exp.train_iter(config.batch_size, 0, 1)
  state = trainer.create_state()
  ema = state["params"]
  for _ in range(3):
    state, _ = step(state, next(data))
    ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, ema, state["params"])
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(state["extra"]["ema"])):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  trainer.writer.close()


def test_nan_guard_remembers_the_first_bad_step(tmp_path):
  """A NaN in the batch: the step that saw it is remembered (the loop then
  stops before saving or evaluating anything, tests/test_train.py), and a
  later bad step does not overwrite it."""
  config, _ = main_lib.parse_config(["--config", TOY])
  exp = main_lib.experiment_module(config).Experiment(config)
  trainer = train_lib.Trainer(config, exp, str(tmp_path))
  step = jax.jit(trainer.step_fn())
  state = trainer.create_state()
  batches = exp.train_iter(config.batch_size, 0, 1)
  state, _ = step(state, next(batches))
  assert int(state["bad_step"]) == -1
  batch = next(batches)
  batch["x"][0, 0] = np.nan
  state, _ = step(state, batch)
  assert int(state["bad_step"]) == 1
  state, _ = step(state, batch)
  assert int(state["bad_step"]) == 1
  trainer.writer.close()


def test_loss_context_carries_the_step(toy_run):
  rows = metrics_lib.read_jsonl(str(toy_run[0] / "metrics.jsonl"))
  seen = [(r["step"], r["train/seen_step"]) for r in rows if "train/seen_step" in r]
  assert len(seen) == STEPS and all(s == t + 1 for s, t in seen)


def test_fine_tuning_takes_params_and_batch_stats(tmp_path, toy_run):
  """After one step from a pretrained run: running mean = 0.9 pretrained +
  0.1 batch mean (flax BatchNorm, momentum 0.9), the batch seen through the
  pretrained first layer."""
  source, pre = toy_run
  wd = tmp_path / "tuned"
  main_lib.main(["train", "--config", TOY, "--workdir", str(wd), "--config.total_steps=1",
                 f"--config.init_from={source}"])
  tuned = load_state(wd)
  config, _ = main_lib.parse_config(["--config", TOY, "--config.total_steps=1"])
  exp = main_lib.experiment_module(config).Experiment(config)
  x = next(exp.train_iter(config.batch_size, 0, 1))["x"]
  dense = pre["params"]["Dense_0"]
  h = x @ dense["kernel"] + dense["bias"]
  old = pre["model_state"]["batch_stats"]["BatchNorm_0"]
  new = tuned["model_state"]["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * h.mean(0), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * h.var(0), rtol=1e-4,
                             atol=1e-5)


def test_average_carries_model_state(tmp_path, toy_run):
  source = toy_run[0]
  out = tmp_path / "avg"
  main_lib.main(["average", str(source), "--last", "2", "--out", str(out)])
  avg = load_state(out)
  a, b = load_state(source, STEPS - CKPT_EVERY), load_state(source, STEPS)
  for key in ("params", "model_state"):
    want = jax.tree.map(lambda x, y: (x + y) / 2, a[key], b[key])
    for x, y in zip(jax.tree.leaves(avg[key]), jax.tree.leaves(want)):
      np.testing.assert_allclose(x, y, rtol=1e-6)


def test_whole_batch_objective_refuses_accumulation(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    main_lib.main(toy_args(tmp_path / "w", "--config.grad_accum=2"))
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "grad_accum" in err and "BatchNorm" in err, err


def test_accumulation_averages_tokens_exactly(tmp_path):
  """Translation's loss is a mean over target tokens: with microbatches of
  unequal token counts, accumulating 2 equals the full batch (and the plain
  mean of microbatch means, what it did before, does not)."""
  from experiments import translate
  config, _ = main_lib.parse_config([
      "--config", "configs/wmt.py:ding,runlocal=True", "--config.optim.name=sgd",
      "--config.optim.b1=0.0", "--config.optim.schedule=constant",
      "--config.optim.warmup_steps=0", "--config.optim.clip_norm=0.0",
      "--config.optim.lr=1.0", "--config.model.dropout=0.0", "--config.batch_size=8"])
  exp = translate.Experiment(config, None, read_data=False)
  trainer = train_lib.Trainer(config, exp, str(tmp_path))
  rng = np.random.default_rng(0)
  L = config.data.max_len
  src = rng.integers(5, 60, (8, L)).astype(np.int32)
  tgt = rng.integers(5, 60, (8, L)).astype(np.int32)
  tgt[1::2, 3:] = 0  # microbatch 1 (odd rows) has 3 tokens a row, microbatch 0 all L
  batch = {"src": src, "tgt": tgt}

  def params_after(loss, k):
    step = train_lib.make_train_step(loss, trainer.tx, {}, k, trainer.mesh)
    return jax.jit(step)(trainer.create_state(), batch)[0]["params"]

  full = params_after(exp.loss, 1)
  accumulated = params_after(exp.loss, 2)

  def unweighted(*args):
    loss, (metrics, state) = exp.loss(*args)
    return loss, ({k: v for k, v in metrics.items() if k != "loss_weight"}, state)
  naive = params_after(unweighted, 2)
  err = lambda p: max(float(jnp.abs(a - b).max()) for a, b in
                      zip(jax.tree.leaves(p), jax.tree.leaves(full)))
  assert err(accumulated) < 1e-5, err(accumulated)
  assert err(naive) > 100 * max(err(accumulated), 1e-6), (err(naive), err(accumulated))
  trainer.writer.close()
