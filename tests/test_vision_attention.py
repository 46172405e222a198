"""Swin, non-local blocks and local self-attention: each against a direct
computation, the released models' sizes, and end to end in the classify
experiment (bad input one line, exit 2, before compile)."""
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.models import resnet, swin
from attnlab.nn import vision
from helpers import make_folder, run_cli


def param_count(model, size=224):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  return sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


# --- Swin ------------------------------------------------------------------------
def test_relative_position_index_is_each_offsets_row():
  """Entry (i, j) is the table row of offset (dy, dx) = pos_i - pos_j,
  counted row-major over dy, dx in [-(w-1), w-1]: a direct double loop."""
  w = 3
  want = np.zeros((w * w, w * w), int)
  for i in range(w * w):
    for j in range(w * w):
      dy, dx = i // w - j // w, i % w - j % w
      want[i, j] = (dy + w - 1) * (2 * w - 1) + (dx + w - 1)
  np.testing.assert_array_equal(vision.relative_position_index(w), want)


def test_patch_merging_is_the_papers_four_strided_slices():
  """The Swin code's x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
  x[1::2, 1::2] concatenated on channels, then LayerNorm and a 4C -> 2C map."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 4, 5))
  slices = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                            x[:, 1::2, 1::2]], -1)
  np.testing.assert_array_equal(swin.patch_merging_order(x), slices)
  layer = swin.PatchMerging()
  params = layer.init(jax.random.PRNGKey(1), x)["params"]
  y = layer.apply({"params": params}, x)
  assert y.shape == (2, 3, 2, 10)
  mean, var = slices.mean(-1, keepdims=True), slices.var(-1, keepdims=True)
  want = (slices - mean) / np.sqrt(var + 1e-5) @ params["reduction"]["kernel"]
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant,released", [
    ("T", 28_288_354), ("S", 49_606_258), ("B", 87_768_224)])
def test_swin_parameter_counts_are_the_released_models(variant, released):
  """The paper's released Swin-T/S/B (1000 classes; the paper rounds them
  to 28M / 50M / 88M)."""
  assert param_count(swin.Swin(**swin.parse_variant(variant))) == released


def test_swin_blocks_shift_every_second_window_but_not_a_single_one():
  """A 2-stage Swin at 16 x 16, patch 2, window 4: stage 1's 8 x 8 map
  has 4 windows (blocks 1, 2 = W-MSA, SW-MSA), stage 2's 4 x 4 map is one
  window (no shift). Checked by running each block's attention both ways."""
  model = swin.Swin(3, width=8, depths=(2, 2), num_heads=(2, 2), patch=2, window=4,
                    drop_path=0.0)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(1), x)
  _, inter = model.apply(variables, x, capture_intermediates=True,
                         mutable=["intermediates"])
  inter = inter["intermediates"]
  for stage, side, shifts in ((1, 8, (0, 2)), (2, 4, (0, 0))):
    for block, shift in enumerate(shifts, 1):
      name = f"stage{stage}_block{block}"
      p = variables["params"][name]
      h_in = inter[name]["attention_norm"]["__call__"][0]
      out = inter[name]["attention"]["__call__"][0][0]
      for s in {0, 2} if side > 4 else {0}:
        got, _ = vision.WindowAttention(p["attention"]["attention"]["query"]["kernel"].shape[1],
                                     4, s).apply({"params": p["attention"]}, h_in)
        assert np.allclose(got, out, atol=1e-6) == (s == shift), (name, s)


@pytest.mark.parametrize("size,words", [
    (256, "not a multiple of the window 7; image sizes that work: multiples of 224"),
    (112, "smaller than the window 7 x 7; image sizes that work: multiples of 224"),
    (226, "not a multiple of the patch size 4")])
def test_swin_image_sizes_that_do_not_work_say_which_do(size, words):
  assert words in swin.check_sizes(size, 4, 7, 4)
  assert swin.check_sizes(224, 4, 7, 4) is None and swin.check_sizes(448, 4, 7, 4) is None
  assert swin.check_sizes(384, 4, 12, 4) is None  # the paper's 384 models: windows of 12
  # Windows of 3, two stages: a 9 x 9 first map is whole windows but cannot be merged.
  assert "stage 1's feature map (9 x 9) is odd, so 2 x 2 patch merging cannot halve it" in (
      swin.check_sizes(36, 4, 3, 2))


# --- attention inside CNNs ---------------------------------------------------------
def test_nonlocal_block_starts_as_the_identity_then_is_the_embedded_gaussian():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 8))
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  block = vision.NonLocalBlock(norm)
  variables = block.init(jax.random.PRNGKey(1), x)
  z, _ = block.apply(variables, x)
  np.testing.assert_array_equal(z, x)
  # With the norm's scale at 1: z = x + W_z(softmax(theta phi^T) g) / sqrt(1 + eps).
  params = jax.tree.map(np.asarray, variables["params"])
  params["W_z_norm"]["scale"] = np.ones_like(params["W_z_norm"]["scale"])
  z, weights = block.apply({**variables, "params": params}, x, return_weights=True)
  x64 = np.asarray(x, np.float64).reshape(2, 24, 8)
  lin = lambda n: x64 @ params[n]["kernel"][0, 0] + params[n]["bias"]
  s = lin("theta") @ lin("phi").transpose(0, 2, 1)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  y = (w @ lin("g")) @ params["W_z"]["kernel"][0, 0] + params["W_z"]["bias"]
  np.testing.assert_allclose(weights, w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(z, (x64 + y / np.sqrt(1 + 1e-5)).reshape(2, 4, 6, 8),
                             rtol=1e-4, atol=1e-5)


def test_a_resnet_with_nonlocal_blocks_starts_as_the_same_resnet():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  with_blocks = resnet.ResNet(5, depth=18, width=8, small_inputs=True, nonlocal_stages=(2, 3))
  variables = with_blocks.init(jax.random.PRNGKey(1), x)
  assert {"stage2_nonlocal", "stage3_nonlocal"} <= set(variables["params"])
  strip = lambda tree: {k: v for k, v in tree.items() if "nonlocal" not in k}
  plain = resnet.ResNet(5, depth=18, width=8, small_inputs=True)
  want, _ = plain.apply({k: strip(v) for k, v in variables.items()}, x)
  got, _ = with_blocks.apply(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def local_attention_loop(x, p, heads, kernel):
  """Each pixel's attention over the in-map pixels of its neighbourhood,
  one pixel and one head at a time (numpy, float64)."""
  x = np.asarray(x, np.float64)
  B, H, W, _ = x.shape
  r = kernel // 2
  proj = lambda n: np.einsum("bijc,cnd->bijnd", x, np.asarray(p[n]["kernel"], np.float64))
  q, k, v = proj("query"), proj("key"), proj("value")
  d = q.shape[-1]
  rows, cols = np.asarray(p["row_offset"], np.float64), np.asarray(p["column_offset"], np.float64)
  out = np.zeros(q.shape)
  for b in range(B):
    for i in range(H):
      for j in range(W):
        for n in range(heads):
          logits, vals = [], []
          for a in range(i - r, i + r + 1):
            for c in range(j - r, j + r + 1):
              if 0 <= a < H and 0 <= c < W:
                rel = np.concatenate([rows[a - i + r, n], cols[c - j + r, n]])
                logits.append(q[b, i, j, n] @ (k[b, a, c, n] + rel) / np.sqrt(d))
                vals.append(v[b, a, c, n])
          w = np.exp(np.array(logits) - max(logits))
          out[b, i, j, n] = (w / w.sum()) @ np.array(vals)
  return out.reshape(B, H, W, -1)


def test_local_self_attention_is_a_loop_over_neighbourhoods():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 4))
  layer = vision.LocalSelfAttention(8, num_heads=2, kernel=3)
  params = layer.init(jax.random.PRNGKey(1), x)["params"]
  y, weights = layer.apply({"params": params}, x, return_weights=True)
  np.testing.assert_allclose(y, local_attention_loop(x, params, 2, 3), rtol=1e-4, atol=1e-5)
  # A corner pixel sees 4 of its 9 neighbours; the other 5 get no weight.
  corner = np.asarray(weights[0, 0, 0, 0]).reshape(3, 3)
  assert np.all(corner[0] == 0) and np.all(corner[:, 0] == 0)
  np.testing.assert_allclose(corner.sum(), 1, rtol=1e-6)


def test_local_self_attention_never_holds_a_pixels_by_pixels_matrix():
  """XLA's memory analysis of the forward at 112 x 112, 64 channels, 8
  heads, 7 x 7: its temporaries are a fraction of one (HW)^2 float32
  matrix (630 MB), which global attention over the map would need."""
  layer = vision.LocalSelfAttention(64, num_heads=8, kernel=7)
  x = jax.ShapeDtypeStruct((1, 112, 112, 64), jnp.float32)
  params = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
  temps = jax.jit(lambda p, x: layer.apply(p, x)[0]).lower(params, x).compile()
  temps = temps.memory_analysis().temp_size_in_bytes
  assert temps < (112 * 112) ** 2 * 4 / 10, temps


def test_local_attention_downsamples_odd_maps_as_the_strided_convolution():
  """28 x 28 images make a 7 x 7 map before the last stage: its 2 x 2
  average pool keeps ceil(7 / 2) = 4 rows, as the stride-2 convolution."""
  x = jnp.zeros((1, 28, 28, 1))
  shapes = [jax.eval_shape(lambda x, m=m: m.init_with_output(jax.random.PRNGKey(0), x)[0][1],
                           x)["tokens"].shape
            for m in (resnet.ResNet(3, depth=18, width=8, small_inputs=True, spatial=s,
                                    local_kernel=3, local_heads=2) for s in ("conv", "local"))]
  assert shapes[0] == shapes[1] == (1, 16, 64)


def test_local_attention_resnet50_is_the_full_attention_layout():
  """Every 3 x 3 convolution of ResNet-50's bottlenecks as 7 x 7 local
  self-attention with 8 heads: 18.0 M parameters, the count Ramachandran et
  al. (2019, Table 1) give their full-attention ResNet-50 (ResNet-50: 25.6 M)."""
  count = param_count(resnet.ResNet(depth=50, spatial="local"))
  assert count == pytest.approx(18.0e6, rel=0.01)


# --- end to end --------------------------------------------------------------------
MODELS = {"swin": "configs/swin.py:folder,runlocal=True",
          "nonlocal": "configs/resnet.py:folder,runlocal=True,attention=nonlocal",
          "local": "configs/resnet.py:folder,runlocal=True,attention=local"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_trains_on_a_folder_and_reports_test_accuracy(tmp_path, name):
  root = make_folder(tmp_path / "imgs")
  rc, out = run_cli("train", "--config", MODELS[name], "--workdir", str(tmp_path / "run"),
                    f"--config.data.folder={root}", "--config.total_steps=4")
  assert rc == 0, out
  with open(tmp_path / "run" / "test.json") as f:
    assert 0 <= json.load(f)["test/accuracy"] <= 1


@pytest.mark.parametrize("spec,override,message", [
    ("swin", "--config.model.window=5", "config.model.image_size: stage 1's feature map "
     "(16 x 16) is not a multiple of the window 5; image sizes that work: multiples of 20"),
    ("swin", "--config.model.window=32", "smaller than the window 32 x 32"),
    ("nonlocal", "--config.model.nonlocal_stages=(2,5)",
     "config.model.nonlocal_stages: stage 5 is out of range: ResNet-18 has stages 1-4"),
    ("local", "--config.model.local_kernel=4", "config.model.local_kernel: 4 is not odd"),
])
def test_bad_model_input_is_one_line_exit_2(tmp_path, spec, override, message):
  root = make_folder(tmp_path / "imgs")
  rc, out = run_cli("train", "--config", MODELS[spec], "--workdir", str(tmp_path / "run"),
                    f"--config.data.folder={root}", override)
  assert rc == 2, out
  assert message in out and "Traceback" not in out and "compiled" not in out, out
