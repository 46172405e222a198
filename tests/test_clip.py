"""CLIP: the losses against their formulas written out in numpy, on 8
devices as on one (global, local and ring-chunked forms, values and
gradients); end-of-text pooling under padding; the temperature clamp; a
run end to end on a captions folder; bad input as one line, exit 2."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from attnlab import sharding as sharding_lib
from experiments import clip
from helpers import COLOURS, deb, make_pairs_folder

EIGHT = sharding_lib.make_mesh((("data", -1),))
ONE = sharding_lib.make_mesh((("data", 1),), jax.devices()[:1])


def embeddings(n=16, e=8, seed=0):
  """Normalised image and text embeddings, each text near its image."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, e))
  y = x + 0.7 * rng.standard_normal((n, e))
  unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)
  return unit(x), unit(y)


def numpy_infonce(x, y, scale):
  logits = scale * x.astype(np.float64) @ y.T.astype(np.float64)

  def ce(z):  # each row's cross-entropy with its diagonal entry as the target
    top = z.max(1, keepdims=True)
    return np.mean(np.log(np.exp(z - top).sum(1)) + top[:, 0] - np.diag(z))
  return (ce(logits) + ce(logits.T)) / 2


def numpy_siglip(x, y, scale, bias):
  logits = scale * x.astype(np.float64) @ y.T.astype(np.float64) + bias
  z = 2 * np.eye(len(x)) - 1
  return -np.sum(np.log(1 / (1 + np.exp(-z * logits)))) / len(x)


def test_contrastive_loss_is_symmetric_infonce():
  x, y = embeddings()
  loss, accuracy = clip.contrastive_loss(x, y, np.log(1 / 0.07))
  np.testing.assert_allclose(loss, numpy_infonce(x, y, 1 / 0.07), rtol=1e-5)
  assert accuracy == np.mean(np.argmax(x @ y.T, 1) == np.arange(len(x)))
  assert 0 < accuracy < 1  # the check above could not pass by accident


def test_sigmoid_loss_is_siglip():
  x, y = embeddings()
  got = clip.sigmoid_loss(x, y, np.log(10.0), -10.0)
  np.testing.assert_allclose(got, numpy_siglip(x, y, 10.0, -10.0), rtol=1e-5)


def _sharded(mesh, *arrays):
  return [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in arrays]


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_every_form_on_eight_devices_gives_the_one_device_loss_and_gradients(loss):
  """The global-batch loss on 8 devices (XLA gathers), the local loss
  (shard_map: own rows against all columns) and, for SigLIP, the ring of
  text chunks, all equal the loss of the whole batch on one device, in
  value and in gradient for the embeddings and the temperature (and
  bias): the gathers' gradients reach every device's rows."""
  x, y = embeddings(n=32)
  scale, bias = jnp.float32(np.log(1 / 0.07)), jnp.float32(-5.0)
  if loss == "softmax":
    whole = lambda x, y, s, b: clip.contrastive_loss(x, y, s)[0]
    local = lambda x, y, s, b: clip.local_contrastive_loss(x, y, s, EIGHT, "data")[0]
  else:
    whole = lambda x, y, s, b: clip.sigmoid_loss(x, y, s, b)
    local = lambda x, y, s, b: clip.local_sigmoid_loss(x, y, s, b, EIGHT, "data")
  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
  ref_value, ref_grads = grad(whole)(*_sharded(ONE, x, y), scale, bias)
  expected = numpy_infonce(x, y, np.exp(scale)) if loss == "softmax" else numpy_siglip(
      x, y, np.exp(scale), bias)
  np.testing.assert_allclose(ref_value, expected, rtol=1e-5)
  for f in (whole, local):
    value, grads = grad(f)(*_sharded(EIGHT, x, y), scale, bias)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
      np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
  assert np.abs(ref_grads[0]).max() > 0 and np.abs(ref_grads[2]) > 0


def test_per_device_negatives_are_the_mean_of_each_devices_own_loss():
  x, y = embeddings(n=32)
  got, _ = jax.jit(lambda x, y: clip.per_device_contrastive_loss(x, y, 2.0, EIGHT, "data"))(
      *_sharded(EIGHT, x, y))
  expected = np.mean([numpy_infonce(x[i:i + 4], y[i:i + 4], np.exp(2.0))
                      for i in range(0, 32, 4)])
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert abs(expected - numpy_infonce(x, y, np.exp(2.0))) > 0.1  # not the global loss


def test_local_accuracy_is_the_batch_accuracy():
  x, y = embeddings(n=32)
  _, whole = clip.contrastive_loss(x, y, 1.0)
  _, local = jax.jit(lambda x, y: clip.local_contrastive_loss(x, y, 1.0, EIGHT, "data"))(
      *_sharded(EIGHT, x, y))
  np.testing.assert_allclose(local, whole)


def test_temperature_is_clamped_into_zero_to_log_100():
  for start, end in ((7.0, np.log(100.0)), (-1.0, 0.0), (2.0, 2.0)):
    params = {"log_scale": jnp.float32(start), "w": jnp.ones(3)}
    out = clip.clamp_temperature(params)
    np.testing.assert_allclose(out["log_scale"], end, rtol=1e-6)
    np.testing.assert_array_equal(out["w"], params["w"])


def test_text_features_are_the_end_of_text_tokens_whatever_the_padding():
  from attnlab.data import tokenizer
  from attnlab.models import clip as clip_lib
  tower = clip_lib.TextTower(50, width=16, depth=2, num_heads=2, mlp_dim=32, context=10)
  eos = tokenizer.EOS
  short = jnp.array([[5, 6, 7, eos], [8, eos, 0, 0]])
  padded = jnp.pad(short, ((0, 0), (0, 6)))
  params = tower.init(jax.random.PRNGKey(0), padded)
  f_short, aux = tower.apply(params, short)
  f_padded, _ = tower.apply(params, padded)
  np.testing.assert_allclose(f_padded, f_short, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(f_short[0], aux["tokens"][0, 3], rtol=1e-6)
  np.testing.assert_allclose(f_short[1], aux["tokens"][1, 1], rtol=1e-6)
  assert not np.allclose(f_short[0], aux["tokens"][0, 2])  # not any token will do


def test_captions_are_the_name_short_names_and_name_with_keywords():
  from attnlab.data import pairs
  assert pairs.captions_of({"name": b"red heart", "keywords": b"love, heart"}) == [
      "red heart", "red heart: love, heart"]
  assert pairs.captions_of({"name": b"ukraine flag", "keywords": b""}) == ["ukraine flag"]
  # emoji-data's short names: underscores read as spaces, the name itself and
  # repeats left out
  row = {"name": b"grinning face with smiling eyes", "keywords": b"",
         "short_names": b"smile, Grinning_Face_With_Smiling_Eyes, big_smile, smile"}
  assert pairs.captions_of(row) == ["grinning face with smiling eyes", "smile", "big smile"]


def test_recall_chance_is_that_of_a_random_ranking():
  """Items of 1-3 captions and 1-2 images (an emoji's two styles): the
  formula against random orders of the captions and of the images."""
  rng = np.random.default_rng(0)
  captions, images_ = np.array([1, 2, 1, 3] * 5), np.array([2, 1, 1, 2] * 5)
  chance = clip.recall_chance(captions, images_, ks=(1, 5))
  text_item = np.repeat(np.arange(len(captions)), captions)
  image_item = np.repeat(np.arange(len(images_)), images_)
  hits = {f"{d}/chance@{k}": [] for d in ("image_to_text", "text_to_image") for k in (1, 5)}
  for _ in range(3000):
    texts, pictures = rng.permutation(text_item), rng.permutation(image_item)
    for k in (1, 5):
      hits[f"image_to_text/chance@{k}"].append(np.mean(np.isin(image_item, texts[:k])))
      hits[f"text_to_image/chance@{k}"].append(np.mean(np.isin(text_item, pictures[:k])))
  for key, values in hits.items():
    np.testing.assert_allclose(chance[key], np.mean(values), atol=0.01, err_msg=key)


def test_images_with_the_same_captions_are_one_retrieval_item():
  ids, texts, text_image = clip.group_pairs(
      [["red heart"], ["cat", "cat: pet"], ["red heart"], ["dog"], ["cat", "cat: pet"]])
  np.testing.assert_array_equal(ids, [0, 1, 0, 2, 1])
  assert texts == ["red heart", "cat", "cat: pet", "dog"]
  np.testing.assert_array_equal(text_image, [0, 1, 1, 3])


def test_a_run_on_a_captions_folder_trains_and_reports_recall(tmp_path):
  from helpers import run_cli
  root = make_pairs_folder(tmp_path / "pairs")
  rc, out = run_cli("train", "--config", "configs/clip.py:folder,runlocal=True",
                    "--workdir", str(tmp_path / "run"), f"--config.data.folder={root}")
  assert rc == 0, out
  assert "eval at step 4: eval/image_to_text/r@1" in out, out
  assert "test/text_to_image/r@10" in out and "test/image_to_text/chance@1" in out, out
  assert os.path.exists(tmp_path / "run" / "tokenizer.model")
  # Retrieval from the command line: a text's nearest images as a grid, an
  # image's nearest captions (the validation split's), best first.
  rc, out = run_cli("retrieve", str(tmp_path / "run"), "--text", "a red square", "--top", "3")
  assert rc == 0, out
  similar = lambda out: [line.split(None, 1) for line in out.splitlines()
                         if line[:1] in "+-" and line[1:2].isdigit()]
  found = similar(out)
  assert len(found) == 3 and [float(s) for s, _ in found] == sorted(
      (float(s) for s, _ in found), reverse=True), out
  assert os.path.exists(tmp_path / "run" / "plots" / "retrieve_a_red_square.png"), out
  rc, out = run_cli("retrieve", str(tmp_path / "run"), "--image",
                    os.path.join(root, "test", "blue_0.png"), "--top", "2")
  captions = {f"a {c} square" for c in COLOURS} | set(COLOURS)  # validation's
  lines = similar(out)
  assert rc == 0 and len(lines) == 2 and {c for _, c in lines} <= captions, out
  rc, out = run_cli("retrieve", str(tmp_path / "run"))
  assert rc == 2 and "give one of --text" in out, out


def test_bad_captions_are_one_line_errors_naming_the_line(tmp_path):
  """Checked when the data is read, before anything compiles (the CLI
  test below shows the exit code of one of them)."""
  from attnlab import config as config_lib
  from attnlab.data import pairs
  root = make_pairs_folder(tmp_path / "pairs")
  data = ml_collections.ConfigDict(dict(folder=root))
  pairs.check_folder(data)  # the folder as made is fine
  train, test = (os.path.join(root, split, "captions.tsv") for split in ("train", "test"))
  for path, line, message in (
      (train, "gone.png\tx\n", "captions.tsv:33 names gone.png, which is not in"),
      (test, "red_0.png\t \n", "captions.tsv:9 has an empty caption for red_0.png"),
      (train, "red_0.png\ta\tb\n", "captions.tsv:33 has 3 tab-separated fields")):
    original = open(path).read()
    with open(path, "a") as f:
      f.write(line)
    with pytest.raises(config_lib.ConfigError, match=message):
      pairs.check_folder(data)
    with open(path, "w") as f:
      f.write(original)


@pytest.mark.parametrize("case", ["missing image", "batch over devices"])
def test_bad_clip_input_is_one_line_exit_2(tmp_path, case):
  from helpers import run_cli
  root = make_pairs_folder(tmp_path / "pairs")
  if case == "missing image":
    with open(os.path.join(root, "train", "captions.tsv"), "a") as f:
      f.write("gone.png\tx\n")
    extra, devices, message = [], 1, "names gone.png, which is not in"
  else:
    extra, devices = ["--config.clip.loss_form=local", "--config.batch_size=12"], 8
    message = "batch_size: global batch 12 is not divisible by 8 devices"
  rc, out = run_cli("train", "--config", "configs/clip.py:folder,runlocal=True",
                    "--workdir", str(tmp_path / "run"), f"--config.data.folder={root}",
                    *extra, devices=devices)
  assert rc == 2 and message in out and "Traceback" not in out, out
  assert len([line for line in out.splitlines() if line.startswith("error")]) == 1, out


def test_a_context_shorter_than_a_prompt_is_refused():
  from attnlab import config as config_lib
  exp = object.__new__(clip.Experiment)
  exp.classes, exp.context, exp.zero_shot_sets = ["smileys & emotion", "flags"], 6, {}
  exp.tokenizer = type("Words", (), {"encode": lambda self, t: t.split()})()
  with pytest.raises(config_lib.ConfigError, match="data.context: 6 tokens is shorter than the "
                     "prompt 'an emoji of smileys & emotion.' \\(7 with its end-of-text"):
    exp.check_prompts()
  exp.context = 7
  exp.check_prompts()


def png(array):
  import io
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def svg(title, tags, creator):
  items = "".join(f"<rdf:li>{t}</rdf:li>" for t in tags)
  return (
      '<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/" '
      'xmlns:dc="http://purl.org/dc/elements/1.1/" '
      'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><metadata><rdf:RDF>'
      f'<cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:subject><rdf:Bag>{items}'
      f'</rdf:Bag></dc:subject><dc:creator><cc:Agent><dc:title>{creator}</dc:title>'
      '</cc:Agent></dc:creator></cc:Work></rdf:RDF></metadata></svg>').encode()


def test_openclipart_builder_names_filters_and_splits_drawings(tmp_path, monkeypatch):
  """The openclipart builder on fixture .debs (the real ones come from
  apt): left-out folders are dropped, a collection title is replaced by the
  file name's words without the author, tags lose the author and
  bookkeeping, a drawing filed twice is kept once, numbered variants share
  a split, images become 64 x 64 RGBA
  padded with transparency."""
  import tensorflow_datasets as tfds
  from attnlab.data import openclipart as oc
  drawings = {  # path: (title, tags, creator, (width, height))
      "animals/cat_jane_do_01": ("Sleepy Cat", ["animal", "", "Jane Doe", "hash"], "Jane Doe",
                                 (40, 20)),
      "animals/cat_jane_do_02": ("Sleepy Cat", ["animal"], "Jane Doe", (20, 40)),
      "food/pear_jo": ("Clipart by Jo Bloggs - pear12", ["fruit", "0x8f45c80"], "Jo Bloggs",
                       (30, 30)),
      "shapes/star_22pt": ("gramastar", ["stars"], "x", (30, 30)),
      **{f"recreation/cards/simple_{c}": ("card", ["card", "simple"], "Nicu", (30, 40))
         for c in "abcdefg"},
      **{f"signs_and_symbols/{a}{b}_sign": (f"road sign {a}{b}", ["sign"], "Al", (30, 30))
         for a in "abcdefgh" for b in "xyz"},
  }
  root = oc.ROOT

  def drawing(i, w, h):  # each image distinct
    a = np.full((h, w, 4), 255, np.uint8)
    a[0, 0, 0] = i
    return png(a)
  svgs = {f"{root}/svg/{p}.svg": svg(t, tags, c) for p, (t, tags, c, _) in drawings.items()}
  pngs = {f"{root}/png/{p}.png": drawing(i, *size)
          for i, (p, (_, _, _, size)) in enumerate(drawings.items())}
  # the same drawing filed twice: a symlink, and a copy under another name
  svgs[f"{root}/svg/plants/pear_jo.svg"] = "../food/pear_jo.svg"
  pngs[f"{root}/png/plants/pear_jo.png"] = "../food/pear_jo.png"
  svgs[f"{root}/svg/tools/cat.svg"] = svgs[f"{root}/svg/animals/cat_jane_do_01.svg"]
  pngs[f"{root}/png/tools/cat.png"] = pngs[f"{root}/png/animals/cat_jane_do_01.png"]
  debs = {oc.PACKAGES["svg"][0]: deb(tmp_path / "svg.deb", svgs),
          oc.PACKAGES["png"][0]: deb(tmp_path / "png.deb", pngs)}
  linked = oc.fetch.deb_members(debs[oc.PACKAGES["png"][0]], f"{root}/png/plants")
  assert linked == {f"{root}/png/plants/pear_jo.png": pngs[f"{root}/png/food/pear_jo.png"]}
  monkeypatch.setattr(oc.fetch, "apt_deb", lambda name, version, sha, dest: debs[name])
  builder = oc.Openclipart(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare()
  rows = {}
  for split in ("train", "validation", "test"):
    ds = tfds.data_source("openclipart", split=split, data_dir=str(tmp_path / "tfds"))
    for i in range(len(ds)):
      rows[ds[i]["path"].decode()] = (split, ds[i])
  assert set(rows) == set(drawings) - {"shapes/star_22pt"}  # each drawing once
  assert {s for s, _ in rows.values()} == {"train", "validation", "test"}
  assert rows["animals/cat_jane_do_01"][0] == rows["animals/cat_jane_do_02"][0]
  _, cat = rows["animals/cat_jane_do_01"]
  assert (cat["name"], cat["keywords"]) == (b"sleepy cat", b"animal")
  assert builder.info.features["label"].names[cat["label"]] == "animals"
  _, pear = rows["food/pear_jo"]
  assert (pear["name"], pear["keywords"]) == (b"pear", b"fruit")
  _, card = rows["recreation/cards/simple_c"]  # "card" is shared by 7 > MAX_SHARED
  assert (card["name"], card["keywords"]) == (b"simple c", b"card, simple")
  assert rows["signs_and_symbols/ax_sign"][1]["name"] == b"road sign ax"
  image = cat["image"]  # (decoded by the data source)
  assert image.shape == (64, 64, 4)
  # a 40 x 20 drawing fills the middle half of the rows; the rest is transparent
  assert image[0, :, 3].max() == 0 and image[32, :, 3].min() == 255


def xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_clip_matmul_flops_match_xlas_count_of_the_unscanned_towers():
  """The analytic count behind CLIP's MFU (XLA counts a scanned tower's
  loop body once) against XLA's count of both towers' forward, which also
  counts element-wise work: never more, at most 10% less."""
  from attnlab.models import clip as clip_lib
  from attnlab.models import vit
  model = clip_lib.CLIP(
      vit.ViT(num_classes=0, width=256, depth=3, mlp_dim=1024, num_heads=4, patch=8,
              image_size=64),
      clip_lib.TextTower(500, width=256, depth=3, num_heads=4, mlp_dim=1024, context=32),
      embed_dim=128)
  images, tokens = jnp.zeros((2, 64, 64, 3)), jnp.ones((2, 32), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, tokens)
  counted = xla_flops(model.apply, params, images, tokens)
  analytic = 2 * clip_lib.matmul_flops(model, 3)
  assert 0.9 * counted < analytic <= counted, (analytic, counted)
