"""DINO (Caron et al. 2021): the projection head, the loss, schedules and
centre against independent statements of the paper's formulas, and the
collapse that centring prevents; then the experiment in the trainer: the
teacher follows the UPDATED student, 8 devices give the step of 1, kill -9
resumes bit-identically, bad input is one line."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import cost
from attnlab.models import dino_head


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_head_is_mlp_bottleneck_l2_then_weight_normalised_linear(norm_last_layer):
  """By hand: GELU (exact) MLP, bottleneck L2-normalised, times a kernel
  whose rows (one per output, PyTorch's layout) are scaled to norm g (1
  when the norm is fixed)."""
  head = dino_head.DINOHead(out_dim=10, hidden=32, bottleneck=8, norm_last_layer=norm_last_layer)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16))
  p = head.init(jax.random.PRNGKey(1), x)["params"]
  h = x
  for i in range(2):
    h = h @ p[f"mlp_{i}"]["kernel"] + p[f"mlp_{i}"]["bias"]
    h = 0.5 * h * (1 + jax.scipy.special.erf(h / np.sqrt(2)))
  h = h @ p["mlp_2"]["kernel"] + p["mlp_2"]["bias"]
  h = h / np.linalg.norm(h, axis=-1, keepdims=True)
  v = p["last_layer"]["kernel"]
  assert v.shape == (10, 8)
  g = 1.0 if norm_last_layer else p["last_layer"]["scale"]
  if not norm_last_layer:  # a learned norm: make it differ from 1 to see it used
    g = p["last_layer"]["scale"] = np.linspace(0.5, 2.0, 10)[:, None]
  want = h @ (g * v / np.linalg.norm(v, axis=1, keepdims=True)).T
  np.testing.assert_allclose(head.apply({"params": p}, x), want, rtol=1e-5, atol=1e-6)
  assert ("scale" in p["last_layer"]) == (not norm_last_layer)


def test_loss_is_the_mean_cross_entropy_over_pairs_of_different_views():
  """The authors' double loop: each teacher (global) view against every
  other student view, -sum P_t log P_s averaged over rows, then over pairs."""
  from experiments import dino
  rng = np.random.default_rng(0)
  V, B, K = 5, 3, 7
  s, t, c = rng.normal(size=(V, B, K)), rng.normal(size=(2, B, K)), rng.normal(size=K)
  total, terms = 0.0, 0
  for q in range(2):
    p_t = np.exp((t[q] - c) / 0.04)
    p_t /= p_t.sum(-1, keepdims=True)
    for v in range(V):
      if v == q:
        continue
      log_p_s = s[v] / 0.1 - np.log(np.exp(s[v] / 0.1).sum(-1, keepdims=True))
      total += np.mean(np.sum(-p_t * log_p_s, -1))
      terms += 1
  loss, monitors = dino.dino_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(c), 0.1, 0.04)
  np.testing.assert_allclose(loss, total / terms, rtol=1e-5)
  p = np.exp((t - c) / 0.04)
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(monitors["teacher_entropy"], np.mean(-np.sum(p * np.log(p), -1)),
                             rtol=1e-4)
  # The gradient reaches the student only.
  g_s, g_t = jax.grad(lambda a, b: dino.dino_loss(a, b, c, 0.1, 0.04)[0], (0, 1))(
      jnp.asarray(s), jnp.asarray(t))
  assert np.abs(g_s).sum() > 0 and not np.asarray(g_t).any()


def test_schedules_and_centre_are_their_formulas():
  from experiments import dino
  np.testing.assert_allclose([dino.cosine(0.996, 1.0, s, 100) for s in (0, 50, 100, 150)],
                             [0.996, 0.998, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose([dino.cosine(0.04, 0.4, s, 10) for s in (0, 5, 10)],
                             [0.04, 0.22, 0.4], rtol=1e-5)
  np.testing.assert_allclose([dino.teacher_temperature(s, 30, 0.04, 0.07) for s in (0, 15, 30, 99)],
                             [0.04, 0.055, 0.07, 0.07], rtol=1e-5)
  t = np.random.default_rng(1).normal(size=(2, 4, 3))
  c = np.ones(3)
  np.testing.assert_allclose(dino.update_center(c, t, 0.9),
                             0.9 * c + 0.1 * t.reshape(8, 3).mean(0), rtol=1e-6)


@pytest.mark.parametrize("centring", [True, False])
def test_centring_and_sharpening_prevent_the_collapse_that_sharpening_alone_causes(centring):
  """Caron et al., section 5.3 / Figure 7, in miniature: a student MLP on
  structureless Gaussian inputs (4 noisy views each), an EMA teacher,
  teacher temperature 0.04. Without centring every input lands on one
  output dimension (teacher entropy and KL -> 0: collapse); with it the
  teacher spreads the inputs over the dimensions and stays uncertain."""
  import optax
  from experiments import dino
  K, D, B = 16, 32, 128
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {"w1": jax.random.normal(k1, (D, 64)) / np.sqrt(D), "b1": jnp.zeros(64),
            "w2": jax.random.normal(k2, (64, K)) / 8, "b2": jnp.zeros(K)}
  net = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
  tx = optax.adam(3e-2)

  @jax.jit
  def step(params, teacher, center, opt, views):
    def loss(p):
      t = net(teacher, views[:2])
      out = dino.dino_loss(net(p, views), t, center, 0.1, 0.04)
      return out[0], (t, out[1])
    (_, (t, monitors)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    params = optax.apply_updates(params, updates)
    new_center = dino.update_center(center, t, 0.9) if centring else center
    return params, dino.ema(teacher, params, 0.9), new_center, opt, monitors, t

  teacher, center, opt = params, jnp.zeros(K), tx.init(params)
  rng = np.random.default_rng(1)
  for _ in range(500):
    x = rng.normal(size=(B, D))
    views = jnp.asarray(np.stack([x + 0.5 * rng.normal(size=(B, D)) for _ in range(4)]),
                        jnp.float32)
    params, teacher, center, opt, monitors, t = step(params, teacher, center, opt, views)
  used = len(np.unique(np.argmax(np.asarray(t[0] - center), -1)))
  if centring:
    assert monitors["teacher_entropy"] > 0.3 and monitors["kl"] > 0.5 and used >= 12
  else:
    assert monitors["teacher_entropy"] < 1e-3 and monitors["kl"] < 1e-3 and used == 1


# --- the experiment in the trainer ------------------------------------------

DINO = "configs/dino.py:folder,runlocal=True"


def dino_trainer(tmp_path, *overrides):
  """A DINO Trainer on a folder of 10 training images (tiny ViT, 2 local crops)."""
  from attnlab import main as main_lib
  from attnlab import train as train_lib
  from experiments import dino
  from helpers import make_folder
  root = make_folder(tmp_path / "imgs")
  config, _ = main_lib.parse_config(["--config", DINO, f"--config.data.folder={root}",
                                     *overrides])
  exp = dino.Experiment(config, str(tmp_path))
  return config, exp, train_lib.Trainer(config, exp, str(tmp_path / "run"))


def unit_rows(kernel):
  return kernel / np.linalg.norm(kernel, axis=1, keepdims=True)  # one row per output


def test_teacher_is_the_ema_of_the_student_after_each_update(tmp_path):
  """teacher_t = m_t teacher_{t-1} + (1 - m_t) student_t, student_t the
  params AFTER update t, m_t on the cosine from momentum_teacher to 1 at
  the pre-update step. A momentum of 0.5 and a large lr make the
  post-update and the pre-update versions measurably different. The last
  layer is frozen in step 0 (0.1 of a one-step epoch): its function
  (unit rows) is unchanged by it and changed by step 1."""
  from experiments import dino
  config, exp, trainer = dino_trainer(tmp_path, "--config.dino.momentum_teacher=0.5",
                                      "--config.optim.lr=0.01")
  step = jax.jit(trainer.step_fn())
  data = exp.train_iter(config.batch_size, 0, 1)
  state = trainer.create_state()
  for i in range(3):
    before = jax.device_get(state)
    state, metrics = step(state, next(data))
    after = jax.device_get(state)
    m = float(dino.cosine(0.5, 1.0, i, config.total_steps))
    np.testing.assert_allclose(metrics["momentum"], m, rtol=1e-6)
    want = dino.ema(before["extra"]["teacher"], after["params"], m)
    stale = dino.ema(before["extra"]["teacher"], before["params"], m)
    gap = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(stale)))
    assert gap > 1e-4
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(after["extra"]["teacher"])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    last = lambda s: unit_rows(s["params"]["head"]["last_layer"]["kernel"])
    moved = np.abs(last(after) - last(before)).max()
    assert (moved < 1e-6) if i == 0 else (moved > 1e-4), (i, moved)
  trainer.writer.close()


def test_a_step_on_eight_devices_is_the_step_on_one(tmp_path):
  """The same batch on a mesh of 8 devices (one row each) and of 1: the
  loss, the centre (a mean over the GLOBAL batch) and the teacher agree,
  and each device does an eighth of the work."""
  from attnlab import sharding as sharding_lib
  out = []
  for n in (1, 8):
    config, exp, trainer = dino_trainer(tmp_path / str(n), f'--config.mesh=(("data", {n}),)',
                                        "--config.mesh_subset=True")
    assert trainer.mesh.size == n
    batch = sharding_lib.global_batch(next(exp.train_iter(config.batch_size, 0, 1)),
                                      trainer.mesh)
    state = trainer.create_state()
    compiled = jax.jit(trainer.step_fn()).lower(state, batch).compile()
    state, metrics = compiled(state, batch)
    out.append(jax.device_get((metrics["loss"], state["extra"])) +
               (cost.step_flops(compiled),))
    trainer.writer.close()
  (loss1, extra1, flops1), (loss8, extra8, flops8) = out
  # Each device computes its own rows, not the whole batch (1/8 of the
  # work, plus the replicated optimizer update).
  assert flops8 < 0.3 * flops1, (flops8, flops1)
  assert np.abs(extra1["center"]).max() > 0
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(extra8), jax.tree.leaves(extra1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def dino_args(workdir, root, *extra):
  return ["train", "--config", DINO, "--workdir", str(workdir), f"--config.data.folder={root}",
          *extra]


def test_killed_9_resumes_bit_identically_with_teacher_centre_and_schedules(tmp_path, capsys):
  """A run killed -9 after a checkpoint and rerun ends with exactly the
  state (student, teacher, centre, optimizer with its weight-decay
  schedule, data iterator) of a run never stopped; that run evaluates from
  step 0 on, ends with the test split's k-NN and linear-probe accuracies
  and attention maps, makes `tables features` and draws any photo's maps."""
  import json
  from attnlab import metrics as metrics_lib
  from helpers import (assert_trees_equal, kill_9_after_a_checkpoint, load_state, make_folder,
                       run_cli)
  root = make_folder(tmp_path / "imgs")
  common = ["--config.total_steps=8", "--config.ckpt_every=2", "--config.keep_ckpts=10",
            "--config.log_every=1"]
  rc, out = run_cli(*dino_args(tmp_path / "ref", root, *common, "--config.eval_every=4"))
  assert rc == 0, out
  test = json.load(open(tmp_path / "ref" / "test.json"))
  for key in ("test/knn_accuracy", "test/probe_accuracy"):
    assert 0.0 <= test[key] <= 1.0, test
  assert any(p.startswith("attention_test_") for p in os.listdir(tmp_path / "ref" / "plots"))
  # Evaluated from the random initial network (step 0) on: k-NN and probe.
  rows = metrics_lib.read_jsonl(str(tmp_path / "ref" / "metrics.jsonl"))
  evals = [r["step"] for r in rows if "eval/knn_accuracy" in r and "eval/probe_accuracy" in r]
  assert evals == [0, 4, 8], evals
  # ./launch.sh tables features: those points and the test split's, and a plot.
  from experiments import tables
  tables.features(str(tmp_path / "ref"))
  table = capsys.readouterr().out
  knn_at = {r["step"]: r["eval/knn_accuracy"] for r in rows if "eval/knn_accuracy" in r}
  for label, value in (("random init", knn_at[0]), ("step 8", knn_at[8]),
                       ("test, step 8", test["test/knn_accuracy"])):
    assert f"| {label} |" in table and f"{100 * value:.1f}%" in table, table
  assert (tmp_path / "features.png").exists()
  # The teacher's attention maps of any photo (matplotlib's sample photo).
  import matplotlib
  photo = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
  rc, out = run_cli("attend", str(tmp_path / "ref"), photo)
  assert rc == 0 and (tmp_path / "ref" / "plots" / "attention_grace_hopper.png").exists(), out
  cut_args = dino_args(tmp_path / "cut", root, *common, "--config.eval_every=0",
                       "--config.final_test=False")
  rc, out = kill_9_after_a_checkpoint(cut_args, tmp_path / "cut")
  assert rc == 0 and "resumed" in out.lower(), out
  ref, cut = load_state(tmp_path / "ref"), load_state(tmp_path / "cut")
  assert int(ref["step"]) == 8 and np.abs(ref["extra"]["center"]).max() > 0
  assert_trees_equal(ref, cut)


@pytest.mark.parametrize("override,message", [
    ("--config.dino.local_size=32", "dino.local_size: local crops of 32 are not smaller"),
    ("--config.model.out_dim=0", "model.out_dim: 0 is not positive"),
    ("--config.dino.teacher_temp=0.2", "dino.teacher_temp: teacher temperature 0.2"),
    ("--config.knn_k=20", "knn_k: k = 20 is larger than the k-NN bank of 10"),
    ("--config.data.pp_local=decode|resize(8)", "data.pp_local"),
])
def test_bad_dino_input_is_one_line_exit_2(tmp_path, override, message):
  from helpers import make_folder, run_cli
  root = make_folder(tmp_path / "imgs")
  rc, out = run_cli(*dino_args(tmp_path / "run", root, override))
  assert rc == 2 and message in out and "Traceback" not in out, out
  assert len([l for l in out.splitlines() if l.startswith("error")]) == 1, out


def test_dino_matmul_flops_match_xlas_count_of_the_unscanned_network():
  """ViT + DINO head on one view: the analytic count behind DINO's MFU
  against XLA's count of the forward (never more, at most 10% less)."""
  from attnlab.models import vit
  from experiments import dino
  network = dino.Network(vit.ViT(num_classes=0, width=256, depth=3, mlp_dim=1024,
                                 num_heads=4, patch=8, image_size=64),
                         dino_head.DINOHead(out_dim=4096, hidden=512, bottleneck=128))
  for size in (64, 32):  # a global and a local crop
    x = jnp.zeros((2, size, size, 3))
    params = jax.eval_shape(network.init, jax.random.PRNGKey(0), x)
    cost = jax.jit(network.apply).lower(params, x).compile().cost_analysis()
    counted = (cost[0] if isinstance(cost, list) else cost)["flops"]
    analytic = 2 * (vit.matmul_flops(network.backbone, 3, size)
                    + dino_head.matmul_flops(network.head, 256))
    assert 0.9 * counted < analytic <= counted, (size, analytic, counted)
