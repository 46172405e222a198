"""The vision half: image sources and ops, ViT, and the classification
experiment end to end, each against an independent reference."""
import gzip
import io
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from attnlab import config as config_lib
from attnlab.data import fashion_mnist, image_ops, images
from attnlab.models import vit
from helpers import load_state, make_folder, run_cli


# --- ViT -----------------------------------------------------------------------
@pytest.mark.parametrize("variant,published", [
    ("Ti/16", 5_717_416), ("S/16", 22_050_664), ("B/16", 86_567_656),
    ("L/16", 304_326_632), ("H/14", 632_045_800)])
def test_vit_parameter_counts_are_the_published_sizes(variant, published):
  """1000 classes at 224 (the ViT paper's Table 1 sizes, exact counts of
  the released checkpoints), from shapes alone."""
  model = vit.ViT(num_classes=1000, **vit.parse_variant(variant))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)) == published


def test_vit_matmul_flops_match_xlas_count_of_the_unscanned_forward():
  """The analytic count (what MFU uses, since XLA counts a scanned
  encoder's loop body once) against XLA's cost analysis of the unscanned
  forward, which also counts the element-wise work (LayerNorm, softmax,
  GELU: a few %, never fewer FLOPs); and a scanned encoder's XLA count is
  about one layer's, as the log says."""
  def xla(model):
    x = jnp.zeros((2, 64, 64, 3))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    cost = jax.jit(model.apply).lower(params, x).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]
  fields = dict(num_classes=10, width=256, depth=4, mlp_dim=1024, num_heads=4, patch=8,
                image_size=64)
  analytic = 2 * vit.matmul_flops(vit.ViT(**fields), 3)
  counted = xla(vit.ViT(**fields))
  assert 0.9 * counted < analytic <= counted, (analytic, counted)
  assert xla(vit.ViT(**fields, scan=True)) < 0.5 * counted


def test_unknown_variant_says_what_exists():
  with pytest.raises(ValueError, match="'B/16'"):
    vit.parse_variant("X/16")


def naive_bilinear(grid, out_h, out_w):
  """[h, w, D] -> [out_h, out_w, D], half-pixel centres, edges clamped."""
  h, w, _ = grid.shape
  def axis(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo
  (y0, y1, fy), (x0, x1, fx) = axis(h, out_h), axis(w, out_w)
  top = grid[y0][:, x0] * (1 - fx)[None, :, None] + grid[y0][:, x1] * fx[None, :, None]
  bottom = grid[y1][:, x0] * (1 - fx)[None, :, None] + grid[y1][:, x1] * fx[None, :, None]
  return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def test_position_embeddings_resize_in_2d_keeping_the_class_token():
  rng = np.random.default_rng(0)
  posemb = jnp.asarray(rng.normal(size=(1, 1 + 7 * 7, 6)), jnp.float32)
  np.testing.assert_array_equal(vit.resize_posemb(posemb, (7, 7), 1), posemb)
  bigger = vit.resize_posemb(posemb, (14, 14), 1)
  assert bigger.shape == (1, 1 + 14 * 14, 6)
  np.testing.assert_array_equal(bigger[:, :1], posemb[:, :1])
  want = naive_bilinear(np.asarray(posemb[0, 1:]).reshape(7, 7, 6), 14, 14)
  np.testing.assert_allclose(bigger[0, 1:].reshape(14, 14, 6), want, rtol=1e-5, atol=1e-5)


def test_patch_embedding_is_patches_flattened_then_one_dense_layer():
  model = vit.ViT(num_classes=3, width=8, depth=1, mlp_dim=16, num_heads=2, patch=4,
                  image_size=8)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  _, state = model.apply({"params": params}, x, capture_intermediates=True)
  got = state["intermediates"]["embedding"]["__call__"][0]  # [B, 2, 2, D]
  patches = np.asarray(x).reshape(2, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 2, 2, -1)
  k = params["embedding"]
  want = patches @ np.asarray(k["kernel"]).reshape(-1, 8) + np.asarray(k["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_another_resolution_uses_the_resized_position_embeddings():
  """A model made for 8 x 8 images run on 16 x 16 ones equals the model made
  for 16 x 16 given the resized embeddings (the multi-crop and fine-tuning
  path), and the head starts at zero."""
  kw = dict(num_classes=3, width=8, depth=2, mlp_dim=16, num_heads=2, patch=4)
  small, big = vit.ViT(image_size=8, **kw), vit.ViT(image_size=16, **kw)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  params = small.init(jax.random.PRNGKey(0), x[:, :8, :8])["params"]
  assert not np.any(np.asarray(params["head"]["kernel"]))
  params["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(2), (8, 3))
  resized = dict(params, pos_embedding=vit.resize_posemb(params["pos_embedding"], (4, 4), 1))
  out_small, aux = small.apply({"params": params}, x, return_weights=True)
  out_big, _ = big.apply({"params": resized}, x)
  np.testing.assert_allclose(out_small, out_big, rtol=1e-5, atol=1e-6)
  assert aux["tokens"].shape == (2, 17, 8) and aux["attention"].shape == (2, 2, 2, 17, 17)


# --- image ops -----------------------------------------------------------------
def png(array):
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def test_pp_strings_parse_and_bad_ones_are_one_line():
  assert image_ops.parse("decode|resize(32)|value_range(0, 1)") == [
      ("decode", (), {}), ("resize", (32,), {}), ("value_range", (0, 1), {})]
  with pytest.raises(config_lib.ConfigError, match="unknown op 'rotate'"):
    image_ops.build("decode|rotate(3)")
  with pytest.raises(config_lib.ConfigError, match="op resize"):
    image_ops.build("resize(32, 5, 6)")
  with pytest.raises(config_lib.ConfigError, match="cannot read op"):
    image_ops.build("decode|resize(32")


def test_decode_composites_transparency_over_white_and_greys_to_rgb():
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[0, 0] = (10, 20, 30, 255)  # one opaque pixel, the rest transparent
  out = image_ops.build("decode")({"image": png(rgba)}, None)["image"]
  assert out.shape == (4, 4, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
  assert np.all(out[1:] == 255)
  grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
  rgb = image_ops.build("decode")({"image": png(grey)}, None)["image"]
  np.testing.assert_array_equal(rgb, np.repeat(grey[..., None], 3, -1))
  one = image_ops.build("decode(1)|value_range(0, 1)")({"image": png(grey)}, None)["image"]
  np.testing.assert_allclose(one[..., 0], grey / 255.0, rtol=1e-6)


def test_inception_crop_covers_the_drawn_fraction_of_the_area():
  """On an image whose pixels hold their own coordinates, the crop's
  coordinate range gives its area: within [area_min, area_max] of the
  image, aspect ratio within [3/4, 4/3]; the same seed, the same crop."""
  y, x = np.meshgrid(np.arange(200), np.arange(200), indexing="ij")
  coords = np.stack([y, x, np.zeros_like(x)], -1).astype(np.uint8)
  crop = image_ops.build("inception_crop(50, area_min=0.2, area_max=0.6)", "t")
  for seed in range(20):
    out = crop({"image": coords}, np.random.default_rng(seed))["image"]
    assert out.shape == (50, 50, 3)
    h = int(out[..., 0].max()) - int(out[..., 0].min()) + 1
    w = int(out[..., 1].max()) - int(out[..., 1].min()) + 1
    assert 0.2 * 0.9 <= h * w / 200 ** 2 <= 0.6 * 1.1
    assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    again = crop({"image": coords}, np.random.default_rng(seed))["image"]
    np.testing.assert_array_equal(out, again)


def test_mixup_mixes_images_and_labels_by_one_lambda():
  batch = {"image": np.stack([np.zeros((2, 2, 1)), np.ones((2, 2, 1))]).astype(np.float32),
           "label": np.array([0, 2])}
  out = image_ops.mixup(batch, np.random.default_rng(0), 0.4, 3)
  lam = out["image"][1, 0, 0, 0]  # row 1 (ones) mixed with row 0 (zeros)
  np.testing.assert_allclose(out["label"][1], [1 - lam, 0, lam], rtol=1e-6)
  np.testing.assert_allclose(out["label"].sum(1), 1.0, rtol=1e-6)


def test_randaugment_ops_match_their_definitions_and_the_recipes_magnitudes():
  """Each op against an independent statement of it; magnitude 10 gives the
  TF implementation's full arguments (rotation 30 degrees, shear 0.3, 100
  pixels of translation at 224); N ops drawn uniformly from all 16."""
  from attnlab.data import randaugment as ra
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
  np.testing.assert_array_equal(ra.posterize(x, 4), x & 0xF0)
  assert not ra.posterize(x, 0).any()  # 0 bits kept: the quirk of randaug(2, 0)
  np.testing.assert_array_equal(ra.solarize(x, 0), 255 - x)
  np.testing.assert_array_equal(ra.solarize(x, 256), x)
  v = np.array([[[0], [100], [127], [128], [250]]], np.uint8)
  np.testing.assert_array_equal(ra.solarize_add(v, 110)[0, :, 0], [110, 210, 237, 128, 250])
  np.testing.assert_array_equal(ra.rotate(x, 90), np.rot90(x))  # counter-clockwise
  moved = ra.translate_x(x, 3)
  np.testing.assert_array_equal(moved[:, 3:], x[:, :-3])
  assert (moved[:, :3] == ra.FILL).all()
  np.testing.assert_array_equal(ra.translate_y(x, -2)[:-2], x[2:])
  assert not ra.brightness(x, 0.0).any()
  np.testing.assert_array_equal(ra.brightness(x, 1.0), x)
  cut = ra.cutout(np.zeros((20, 20, 1), np.uint8), 3, rng)[..., 0] == ra.FILL
  rows, cols = np.nonzero(cut)
  assert 0 < cut.sum() <= 36 and cut.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
  big = rng.integers(0, 256, (224, 224, 1), dtype=np.uint8)
  for name, fn, arg in [("Rotate", ra.rotate, 30.0), ("ShearX", ra.shear_x, 0.3),
                        ("TranslateX", ra.translate_x, 100)]:
    out = ra.OPS[name](big, 10, rng)
    assert any(np.array_equal(out, fn(big, s * arg)) for s in (1, -1)), name

  chosen = []
  ops = {n: (lambda n: lambda im, m, r: chosen.append(n) or im)(n) for n in ra.NAMES}
  for _ in range(200):
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(ra, "OPS", ops)
      ra.randaugment(x, rng, 2, 10)
  assert len(chosen) == 400 and set(chosen) == set(ra.NAMES) and len(ra.NAMES) == 16
  pp = image_ops.build("randaug(2, 15)")
  for image in (x, x[..., :1]):
    out = pp({"image": image}, np.random.default_rng(1))["image"]
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, pp({"image": image}, np.random.default_rng(1))["image"])
  with pytest.raises(ValueError, match="before value_range"):
    image_ops.build("value_range|randaug")({"image": x}, rng)


def test_self_supervised_photometric_ops_against_their_definitions():
  """DINO's view ops: grey is ITU-R 601 luma on every channel; jitter with
  zero ranges and blur with p=0 change nothing, full-range contrast jitter
  moves pixels but keeps the grey mean; blur keeps the mean and lowers the
  variance; solarize inverts the bright half."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  grey = image_ops.build("random_grey(p=1.0)")({"image": x}, rng)["image"]
  luma = (x.astype(np.int64) @ np.array([299, 587, 114]) + 500) // 1000
  np.testing.assert_allclose(grey[..., 0], luma, atol=1)
  assert (grey == grey[..., :1]).all()
  still = image_ops.build("color_jitter(0, 0, 0, 0, p=1.0)|gaussian_blur(p=0.0)|solarize(p=0.0)")
  np.testing.assert_array_equal(still({"image": x}, rng)["image"], x)
  g = x[..., :1]
  jittered = image_ops.build("color_jitter(0, 0.9, p=1.0)")({"image": g}, rng)["image"]
  assert not np.array_equal(jittered, g) and abs(jittered.mean() - g.mean()) < 2
  blurred = image_ops.build("gaussian_blur(p=1.0, sigma_min=2, sigma_max=2)")(
      {"image": g}, rng)["image"]
  assert abs(blurred.mean() - g.mean()) < 3 and blurred.std() < 0.5 * g.std()
  sol = image_ops.build("solarize(p=1.0)")({"image": x}, rng)["image"]
  np.testing.assert_array_equal(sol, np.where(x < 128, x, 255 - x))


# --- sources -------------------------------------------------------------------
def test_idx_files_read_as_written():
  want = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  header = (0x0803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in want.shape)
  np.testing.assert_array_equal(fashion_mnist.read_idx(gzip.compress(header + want.tobytes())),
                                want)


def folder_data(root, **kw):
  return ml_collections.ConfigDict(dict(source="folder", folder=root, holdout=0.34,
                                        pp_train="decode", pp_eval="decode", **kw))


def test_folder_splits_labels_and_holdout(tmp_path):
  root = make_folder(tmp_path / "imgs")
  data = folder_data(root)
  images.check_folder(data)
  assert images.class_names(data) == ["blue", "red"]
  train, val, test = (images.source(data, s) for s in ("train", "validation", "test"))
  assert (len(train), len(val), len(test)) == (8, 4, 6)  # 2 of each label's 6 held out
  assert not set(train.files) & set(val.files)
  assert sorted(test.labels) == [0, 0, 0, 1, 1, 1]
  row = images.Preprocessed(val, "decode|value_range(0, 1)")[0]
  assert row["image"].shape == (12, 12, 3) and row["label"] in (0, 1)
  # A tfds slice takes each label's share of its files (the 4 training ones).
  half = images.source(data, "train[:50%]")
  assert sorted(half.labels) == [0, 0, 1, 1]
  assert set(half.files) <= set(train.files)
  assert images.source(data, "test[-1:]").labels == [0, 1]


@pytest.mark.parametrize("damage,message", [
    ("corrupt", "0.png is not a readable image"),
    ("empty_label", "has no images"),
    ("one_label", "label folder"),
    ("no_test", "no test/ subfolder")])
def test_bad_folders_are_one_line_naming_the_problem(tmp_path, damage, message):
  root = make_folder(tmp_path / "imgs")
  if damage == "corrupt":
    with open(os.path.join(root, "train", "red", "0.png"), "wb") as f:
      f.write(b"not a png at all")
  elif damage == "empty_label":
    for name in os.listdir(os.path.join(root, "train", "red")):
      os.remove(os.path.join(root, "train", "red", name))
  elif damage == "one_label":
    import shutil
    shutil.rmtree(os.path.join(root, "train", "red"))
    shutil.rmtree(os.path.join(root, "test", "red"))
  else:
    import shutil
    shutil.rmtree(os.path.join(root, "test"))
  with pytest.raises(config_lib.ConfigError, match=message):
    images.check_folder(folder_data(root))


# --- the experiment, end to end --------------------------------------------------
def train_args(workdir, folder, *extra):
  return ["train", "--config", "configs/vit.py:folder,runlocal=True", "--workdir",
          str(workdir), f"--config.data.folder={folder}", "--config.total_steps=6",
          "--config.eval_every=3", *extra]


def test_vit_trains_on_a_folder_and_reports_test_accuracy(tmp_path):
  root = make_folder(tmp_path / "imgs")
  rc, out = run_cli(*train_args(tmp_path / "run", root), devices=2)
  assert rc == 0, out
  with open(tmp_path / "run" / "test.json") as f:
    test = json.load(f)
  # 6 test images; accuracy counts whole images only.
  assert test["test/accuracy"] * 6 == pytest.approx(round(test["test/accuracy"] * 6))
  plots = os.listdir(tmp_path / "run" / "plots")
  assert any(p.startswith("confusion_test") for p in plots)
  assert any(p.startswith("predictions_test") for p in plots)


def test_fine_tuning_at_another_resolution_takes_all_but_the_head(tmp_path):
  """From a 32 x 32 run to 16 x 16 images: every parameter but the head
  taken over, the position embeddings resized from the 8 x 8 grid to 4 x 4."""
  root = make_folder(tmp_path / "imgs")
  rc, out = run_cli(*train_args(tmp_path / "pre", root))
  assert rc == 0, out
  rc, out = run_cli(*train_args(
      tmp_path / "ft", root, f"--config.init_from={tmp_path / 'pre'}",
      "--config.model.image_size=16", "--config.total_steps=1",
      "--config.optim.frozen=('(?!head/).*',)",  # one step that trains only the head
      "--config.data.pp_train=decode|resize(16)", "--config.data.pp_eval=decode|resize(16)"))
  assert rc == 0, out
  pre, ft = load_state(tmp_path / "pre")["params"], load_state(tmp_path / "ft")["params"]
  np.testing.assert_array_equal(ft["embedding"]["kernel"], pre["embedding"]["kernel"])
  jax.tree.map(np.testing.assert_array_equal, ft["encoder"], pre["encoder"])
  want = vit.resize_posemb(jnp.asarray(pre["pos_embedding"]), (4, 4), 1)
  np.testing.assert_allclose(ft["pos_embedding"], want, rtol=1e-6)
  # The head is new (zero, then one step), not the pretrained run's.
  assert not np.allclose(ft["head"]["kernel"], pre["head"]["kernel"])
  # Without a class token the checkpoint's 1 + 8 x 8 positions are no grid
  # to interpolate: refused in one line, before compile.
  rc, out = run_cli(*train_args(tmp_path / "gap", root, f"--config.init_from={tmp_path / 'pre'}",
                                "--config.model.pool=gap"))
  assert rc == 2 and "65 position embeddings are not 0 class token(s) + a square grid" in out, out
  assert "Traceback" not in out and "compil" not in out.lower(), out


@pytest.mark.parametrize("override,message", [
    ("--config.model.variant=Ti/5", "model.image_size: 32 is not divisible by the patch size 5"),
    ("--config.model.variant=Q/4", "unknown ViT variant"),
    ("--config.data.pp_train=decode|blur", "unknown op 'blur'"),
    ("--config.data.pp_train=decode|resize(32)|value_range|randaug",
     "randaug needs uint8 images, got float32: put it before value_range")])
def test_bad_vision_input_is_one_line_exit_2(tmp_path, override, message):
  root = make_folder(tmp_path / "imgs")
  rc, out = run_cli(*train_args(tmp_path / "run", root, override))
  assert rc == 2, out
  assert message in out and "Traceback" not in out


# --- ResNet --------------------------------------------------------------------
@pytest.mark.parametrize("depth,published", [
    (18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160),
    (152, 60_192_808)])
def test_resnet_parameter_counts_are_torchvisions(depth, published):
  """ResNet v1.5 at 1000 classes: the parameter counts of torchvision's
  resnet18 ... resnet152 (BatchNorm's running statistics are not parameters)."""
  from attnlab.models import resnet
  shapes = jax.eval_shape(resnet.ResNet(depth=depth).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 224, 224, 3)))
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])) == published
  assert "batch_stats" in shapes


def test_batchnorm_statistics_are_over_the_global_batch_on_8_devices():
  """One training forward pass with the batch split over 8 devices gives
  the outputs and updated running statistics of 1 device with the whole
  batch: BatchNorm's mean and variance are over the global batch."""
  from attnlab import sharding as sharding_lib
  from attnlab.models import resnet
  model = resnet.ResNet(num_classes=3, depth=18, width=8, small_inputs=True)
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 8, 8, 3))
  variables = model.init(jax.random.PRNGKey(0), x[:1])
  step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  one = step(variables, x)
  mesh = sharding_lib.make_mesh((("data", -1),))
  assert mesh.shape["data"] == 8
  split = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  eight = step(variables, split)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # ... and not what per-device statistics (batches of 2) would give.
  per_device = model.apply(variables, x[:2], train=True, mutable=["batch_stats"])[1]
  assert not np.allclose(jax.tree.leaves(per_device)[0], jax.tree.leaves(one[1])[0])


def test_resnet_killed_9_resumes_bit_identically_with_statistics_and_a_frozen_stem(tmp_path):
  """BatchNorm statistics (model_state), a frozen stem, the image
  pipeline's iterator: a run killed -9 after a checkpoint and rerun ends
  with exactly the state of a run never stopped."""
  from helpers import assert_trees_equal, kill_9_after_a_checkpoint
  root = make_folder(tmp_path / "imgs")

  def args(workdir):
    return ["train", "--config", "configs/resnet.py:folder,runlocal=True", "--workdir",
            str(workdir), f"--config.data.folder={root}", "--config.total_steps=8",
            "--config.ckpt_every=2", "--config.keep_ckpts=10", "--config.log_every=1",
            "--config.eval_every=0", "--config.final_test=False",
            "--config.optim.frozen=('stem_.*',)"]
  rc, out = run_cli(*args(tmp_path / "ref"))
  assert rc == 0, out
  rc, out = kill_9_after_a_checkpoint(args(tmp_path / "cut"), tmp_path / "cut")
  assert rc == 0 and "resumed" in out.lower(), out
  ref, cut = load_state(tmp_path / "ref"), load_state(tmp_path / "cut")
  assert jax.tree.leaves(ref["model_state"])  # there are statistics to compare
  assert_trees_equal(ref, cut)
  first = load_state(tmp_path / "ref", step=2)
  assert_trees_equal(first["params"]["stem_conv"], ref["params"]["stem_conv"])


def test_attend_draws_maps_of_a_users_photo_and_refuses_a_non_image(tmp_path):
  """./launch.sh attend WORKDIR IMAGE: a photo of any size (matplotlib's
  sample photo) gets per-head and rollout maps in plots/ (and training
  drew them for 4 test images); a file that is not an image is a one-line
  error."""
  import matplotlib
  photo = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
  root = make_folder(tmp_path / "imgs")
  rc, out = run_cli(*train_args(tmp_path / "run", root))
  assert rc == 0, out
  plots = tmp_path / "run" / "plots"
  assert sum(p.startswith("attention_test_") for p in os.listdir(plots)) == 4
  rc, out = run_cli("attend", str(tmp_path / "run"), photo)
  assert rc == 0, out
  assert (plots / "attention_grace_hopper.png").exists()
  bad = tmp_path / "notes.png"
  bad.write_text("not an image")
  rc, out = run_cli("attend", str(tmp_path / "run"), str(bad))
  assert rc == 2 and "is not a readable image" in out and "Traceback" not in out


def test_emoji_builder_keeps_each_emoji_and_its_variants_in_one_split(tmp_path, monkeypatch):
  """The emoji builder on fixture packages (the real ones are fetched with
  npm): both styles and the skin-tone variants of an emoji land in the same
  split, the Component swatches are left out, keywords join by name."""
  import tarfile
  import tensorflow_datasets as tfds
  from attnlab.data import emoji

  def tgz(path, files):
    with tarfile.open(path, "w:gz") as tar:
      for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return str(path)
  rgba = png(np.full((64, 64, 4), 200, np.uint8))
  entries = [{"name": f"THING {i}", "unified": f"1F{i:03X}", "image": f"1f{i:03x}.png",
              "short_names": [f"thing{i}"], "category": emoji.CATEGORIES[i % 9],
              "skin_variations": ({"1F3FB": {"image": f"1f{i:03x}-1f3fb.png"}} if i % 4 == 0
                                  else None)} for i in range(40)]
  entries.append({"name": "LIGHT SKIN TONE", "unified": "1F3FB", "image": "1f3fb.png",
                  "short_names": ["skin-tone-2"], "category": "Component"})
  images_ = {}
  for e in entries:
    for image in [e["image"]] + [v["image"] for v in (e.get("skin_variations") or {}).values()]:
      images_[image] = rgba
  packages = {
      name: tgz(tmp_path / f"{style}.tgz", {
          "package/emoji.json": json.dumps(entries).encode(),
          **{f"package/img/{style}/64/{k}": v for k, v in images_.items()}})
      for style, (name, _, _) in emoji.PACKAGES.items()}
  packages[emoji.KEYWORDS[0]] = tgz(tmp_path / "kw.tgz", {"package/en/data.json": json.dumps(
      [{"label": "thing 3", "tags": ["three", "trio"]}]).encode()})
  monkeypatch.setattr(emoji.fetch, "npm_pack", lambda name, version, sha, dest: packages[name])
  builder = emoji.Emoji(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare()
  rows = {split: [tfds.data_source("emoji", split=split, data_dir=str(tmp_path / "tfds"))[i]
                  for i in range(builder.info.splits[split].num_examples)]
          for split in ("train", "validation", "test")}
  where = {}
  for split, examples in rows.items():
    for x in examples:
      where.setdefault(x["name"].decode(), set()).add(split)
  assert len(where) == 40 and all(len(s) == 1 for s in where.values())  # one split each
  assert "light skin tone" not in where
  total = sum(len(v) for v in rows.values())
  assert total == 2 * (40 + 10)  # 2 styles x (40 emoji + 10 skin-tone variants)
  three = [x for v in rows.values() for x in v if x["name"] == b"thing 3"]
  assert three and all(x["keywords"] == b"three, trio" for x in three)
  assert {split for split in where.values() for split in split} == {"train", "validation", "test"}


def test_linear_probe_of_a_pretrained_run_leaves_its_backbone_frozen(tmp_path):
  """configs/vit.py:...,probe=True --config.init_from=RUN: the backbone is
  the pretrained run's, unchanged; the L-BFGS probe's and the k-NN's
  validation and test accuracies are reported; a run of another architecture is refused."""
  root = make_folder(tmp_path / "imgs")
  rc, out = run_cli(*train_args(tmp_path / "pre", root))
  assert rc == 0, out
  probe_args = ["train", "--config", "configs/vit.py:folder,runlocal=True,probe=True",
                "--workdir", str(tmp_path / "probe"), f"--config.data.folder={root}",
                f"--config.init_from={tmp_path / 'pre'}"]
  rc, out = run_cli(*probe_args)
  assert rc == 0, out
  with open(tmp_path / "probe" / "test.json") as f:
    test = json.load(f)
  assert 0 <= test["test/probe_accuracy"] <= 1 and test["test/probe_l2"] > 0
  assert 0 <= test["test/knn_accuracy"] <= 1  # DINO's k-NN of the same features
  pre, probe = load_state(tmp_path / "pre")["params"], load_state(tmp_path / "probe")["params"]
  jax.tree.map(np.testing.assert_array_equal, probe["encoder"], pre["encoder"])
  rc, out = run_cli(*probe_args[:4], str(tmp_path / "other"), *probe_args[5:],
                    "--config.model.width=24")
  assert rc == 2 and "holds another architecture" in out, out


def test_compile_an_imagenet_config_without_its_data():
  """./launch.sh compile of the i1k recipe on 2 fake devices: classes and
  channels from tfds's description of imagenet2012 (not prepared here),
  FLOPs counted for the whole step (XLA's per-device count x devices)."""
  rc, out = run_cli("compile", "configs/vit.py:i1k,variant=Ti/16", "--devices", "2",
                    "--config.batch_size=4")
  assert rc == 0, out
  # Ti/16's 5,717,416 + the recipe's 192-wide pre-logits layer (37,056)
  assert "{'data': 2}" in out and "5,754,472 params" in out
  total, per_device = (float(x) for x in re.search(
      r"([\d.e+-]+) TFLOP per step in all, ([\d.e+-]+) per device", out).groups())
  assert total == pytest.approx(2 * per_device, rel=1e-3)
  # ViT-Ti/16's forward is 1.26 GMACs per image (timm); a train step is
  # about 3 forwards, 2 FLOPs per multiply-add: 4 x 7.6 GFLOP.
  assert total * 1e12 == pytest.approx(4 * 3 * 2 * 1.26e9, rel=0.1)


def test_a_plain_tfds_name_trains_through_the_same_pipeline(tmp_path):
  """--config.data.source=NAME for any prepared tfds dataset with image and
  label features (cifar10, imagenette, ...): here a small one prepared in
  the test (fmnist's builder on fixture arrays, in its own data dir); the
  run trains, evaluates on a tfds split string and reads the test split."""
  from attnlab import main as main_lib
  rng = np.random.default_rng(0)
  arrays = (rng.integers(0, 255, (40, 28, 28)).astype(np.uint8), rng.integers(0, 10, 40))
  builder = fashion_mnist.Fmnist(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder._split_generators = lambda dl: {
      split: builder._generate_examples(arrays, 0, 40) for split in ("train", "validation", "test")}
  builder.download_and_prepare()
  wd = tmp_path / "run"
  main_lib.main(["train", "--config", "configs/vit.py:fmnist,runlocal=True", "--workdir",
                 str(wd), "--config.data.train_split=train[:80%]",
                 "--config.data.eval_split=train[80%:]",
                 f"--config.data.data_dir={tmp_path / 'tfds'}"])
  with open(wd / "test.json") as f:
    test = json.load(f)
  assert test["split"] == "test" and 0 <= test["test/accuracy"] <= 1
  assert int(load_state(wd)["step"]) == 4
