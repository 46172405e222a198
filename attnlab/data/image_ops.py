"""Image preprocessing ops, chosen by a config string as in big_vision:

  data.pp_train = "decode|inception_crop(224)|flip_lr|value_range(-1, 1)"
  data.pp_eval  = "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)"

Ops are separated by "|"; each is `name` or `name(args)` with Python literal
arguments (one string is easy to override on the command line). An op takes
an example {"image": ..., "label": ..., ...} of numpy values and a numpy
Generator (grain hands each element its own, derived from the seed and the
element's index: deterministic, and resumable from a checkpoint) and returns
the new example. Images are uint8 [H, W, C] until `value_range` or
`normalize` makes them float32.

Batch ops run on whole batches after batching: `mixup(batch, rng, alpha)`.
"""
import ast
import io

import numpy as np

from attnlab import config as config_lib
from attnlab.data.pixels import _array, _pil

OPS = {}


def op(factory):
  """Registers `factory(*args) -> apply(example, rng) -> example` under its name."""
  OPS[factory.__name__] = factory
  return factory


def parse(pp, key="data.pp"):
  """"a|b(1, x=2)" -> [("a", (), {}), ("b", (1,), {"x": 2})]; one-line
  ConfigError for a bad string or an unknown op."""
  steps = []
  for part in filter(None, (p.strip() for p in pp.split("|"))):
    try:
      call = ast.parse(part, mode="eval").body
      if isinstance(call, ast.Name):
        call = ast.Call(func=call, args=[], keywords=[])
      if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ValueError
      args = tuple(ast.literal_eval(a) for a in call.args)
      kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError):
      raise config_lib.ConfigError(key, f"cannot read op {part!r}",
                                   "write ops as name or name(literal, key=literal) "
                                   "separated by |") from None
    name = call.func.id
    config_lib.check(name in OPS, key, f"unknown op {name!r}", f"use ops of {sorted(OPS)}")
    steps.append((name, args, kwargs))
  return steps


def build(pp, key="data.pp"):
  """The pp string as one function (example, rng) -> example. Arguments an
  op does not take are a ConfigError here, before anything runs."""
  return compose(parse(pp, key), key)


def compose(steps, key="data.pp"):
  """Parsed steps [(name, args, kwargs)] as one function."""
  fns = []
  for name, args, kwargs in steps:
    try:
      fns.append(OPS[name](*args, **kwargs))
    except (TypeError, ValueError) as e:
      raise config_lib.ConfigError(key, f"op {name}{args or ''}: {e}",
                                   f"see attnlab/data/image_ops.py for {name}'s arguments") from None

  def apply(example, rng):
    for fn in fns:
      example = fn(example, rng)
    return example
  return apply


def for_any_image(pp, size, key="data.pp_eval"):
  """(pp with any image first resized and centre-cropped to size x size
  right after its decode, that resize and crop alone): a user's own
  picture of any shape through a run's eval pipeline, and as shown."""
  steps = parse(pp, key)
  fit = [("resize_small", (size,), {}), ("central_crop", (size,), {})]
  return compose(steps[:1] + fit + steps[1:], key), compose(fit, key)


def _size(size):
  return (size, size) if isinstance(size, int) else tuple(size)


def _resample(method):
  from PIL import Image
  methods = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
  if method not in methods:
    raise ValueError(f"method={method!r} is not one of {sorted(methods)}")
  return methods[method]


def _image_op(fn):
  """An op that only changes example["image"]: fn(image, rng) -> image."""
  def apply(example, rng):
    return {**example, "image": fn(example["image"], rng)}
  return apply


@op
def decode(channels=3):
  """Encoded bytes (PNG, JPEG, ...) or an array -> uint8 [H, W, channels].
  Transparent pixels (the emoji's alpha) are composited over white; grey
  images are repeated to 3 channels and colour ones made grey for 1."""
  if channels not in (1, 3):
    raise ValueError(f"channels={channels} is not 1 or 3")
  from PIL import Image

  def fn(image, rng):
    img = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else _pil(np.asarray(image))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
      rgba = img.convert("RGBA")
      white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
      img = Image.alpha_composite(white, rgba)
    return _array(img.convert("RGB" if channels == 3 else "L"), channels)
  return _image_op(fn)


@op
def resize(size, method="bilinear"):
  """To `size` (int: square, or (height, width)), aspect ratio not kept."""
  resample = _resample(method)
  h, w = _size(size)
  return _image_op(lambda image, rng: _array(_pil(image).resize((w, h), resample),
                                             image.shape[-1]))


@op
def resize_small(size):
  """The shorter side to `size`, aspect ratio kept (before a central crop)."""
  from PIL import Image

  def fn(image, rng):
    h, w = image.shape[:2]
    scale = size / min(h, w)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return _array(_pil(image).resize(new, Image.BILINEAR), image.shape[-1])
  return _image_op(fn)


@op
def central_crop(size):
  ch, cw = _size(size)

  def fn(image, rng):
    h, w = image.shape[:2]
    if h < ch or w < cw:
      raise ValueError(f"central_crop({size}) of a {h} x {w} image: resize first")
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top:top + ch, left:left + cw]
  return _image_op(fn)


@op
def inception_crop(size, area_min=0.05, area_max=1.0, method="bilinear"):
  """Inception's random-resized crop (Szegedy et al. 2015): a crop of a
  random fraction [area_min, area_max] of the area and aspect ratio in
  [3/4, 4/3] (log-uniform), resized to `size` (DINO: method="bicubic").
  Falls back to the whole image when 10 draws do not fit."""
  if not 0 < area_min <= area_max <= 1:
    raise ValueError(f"need 0 < area_min <= area_max <= 1, got {area_min}, {area_max}")
  from PIL import Image
  resample = _resample(method)
  h_out, w_out = _size(size)

  def fn(image, rng):
    h, w = image.shape[:2]
    top, left, ch, cw = 0, 0, h, w
    for _ in range(10):
      area = h * w * rng.uniform(area_min, area_max)
      ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      cw_, ch_ = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
      if 0 < cw_ <= w and 0 < ch_ <= h:
        top, left = rng.integers(0, h - ch_ + 1), rng.integers(0, w - cw_ + 1)
        ch, cw = ch_, cw_
        break
    crop = image[top:top + ch, left:left + cw]
    return _array(_pil(crop).resize((w_out, h_out), resample), image.shape[-1])
  return _image_op(fn)


@op
def flip_lr(p=0.5):
  """Mirror left-right with probability p."""
  return _image_op(lambda image, rng: image[:, ::-1] if rng.uniform() < p else image)


# --- photometric ops of the self-supervised recipes (DINO, BYOL) ------------
@op
def color_jitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8):
  """With probability p, brightness, contrast and saturation factors drawn
  from [1 - x, 1 + x] and a hue shift from [-hue, hue] (of a full turn),
  applied in a random order (torchvision's ColorJitter, which DINO uses).
  Grey images get brightness and contrast only."""
  from matplotlib import colors
  from PIL import Image, ImageEnhance

  def shift_hue(pil, amount):  # in float HSV (PIL's 8-bit HSV loses up to 5 levels)
    hsv = colors.rgb_to_hsv(np.asarray(pil, np.float32) / 255)
    hsv[..., 0] = (hsv[..., 0] + amount) % 1.0
    return Image.fromarray(np.round(colors.hsv_to_rgb(hsv) * 255).astype(np.uint8))

  def fn(image, rng):
    if rng.uniform() >= p:
      return image
    steps = [("Brightness", rng.uniform(1 - brightness, 1 + brightness)),
             ("Contrast", rng.uniform(1 - contrast, 1 + contrast))]
    if image.shape[-1] == 3:
      steps += [("Color", rng.uniform(1 - saturation, 1 + saturation)),
                ("hue", rng.uniform(-hue, hue))]
    pil = _pil(image)
    for i in rng.permutation(len(steps)):
      name, amount = steps[i]
      pil = (shift_hue(pil, amount) if name == "hue"
             else getattr(ImageEnhance, name)(pil).enhance(amount))
    return _array(pil, image.shape[-1])
  return _image_op(fn)


@op
def random_grey(p=0.2):
  """With probability p, the image in grey (kept at its channel count)."""
  def fn(image, rng):
    if rng.uniform() >= p or image.shape[-1] == 1:
      return image
    grey = np.asarray(_pil(image).convert("L"))[..., None]
    return np.repeat(grey, image.shape[-1], -1)
  return _image_op(fn)


@op
def gaussian_blur(p=0.5, sigma_min=0.1, sigma_max=2.0):
  """With probability p, PIL's Gaussian blur with radius (sigma) drawn
  from [sigma_min, sigma_max], as DINO's."""
  from PIL import ImageFilter

  def fn(image, rng):
    if rng.uniform() >= p:
      return image
    radius = rng.uniform(sigma_min, sigma_max)
    return _array(_pil(image).filter(ImageFilter.GaussianBlur(radius)), image.shape[-1])
  return _image_op(fn)


@op
def solarize(p=0.2, threshold=128):
  """With probability p, values at or above `threshold` inverted."""
  from attnlab.data import randaugment
  return _image_op(lambda image, rng: image if rng.uniform() >= p
                   else randaugment.solarize(image, threshold))


@op
def randaug(num_layers=2, magnitude=10):
  """RandAugment (attnlab/data/randaugment.py): `num_layers` ops at
  `magnitude`, on uint8 images (before value_range)."""
  from attnlab.data import randaugment
  if num_layers < 0 or magnitude < 0:
    raise ValueError(f"need num_layers >= 0 and magnitude >= 0, got {num_layers}, {magnitude}")
  return _image_op(lambda image, rng: randaugment.randaugment(image, rng, num_layers, magnitude))


@op
def value_range(vmin=-1.0, vmax=1.0):
  """uint8 [0, 255] -> float32 [vmin, vmax]."""
  return _image_op(lambda image, rng: (
      np.asarray(image, np.float32) * ((vmax - vmin) / 255.0) + vmin))


@op
def normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
  """uint8 -> float32 (x / 255 - mean) / std per channel (ImageNet's
  statistics by default)."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return _image_op(lambda image, rng: (np.asarray(image, np.float32) / 255.0 - mean) / std)


def mixup(batch, rng, alpha, num_classes):
  """mixup (Zhang et al. 2018) of a batch: images and one-hot labels mixed
  with the batch rolled by one row, by one lambda ~ Beta(alpha, alpha) per
  batch. Returns the batch with "label" as soft targets [B, num_classes]."""
  lam = np.float32(rng.beta(alpha, alpha))
  onehot = np.eye(num_classes, dtype=np.float32)[batch["label"]]
  image = batch["image"].astype(np.float32)
  return {**batch, "image": lam * image + (1 - lam) * np.roll(image, 1, 0),
          "label": lam * onehot + (1 - lam) * np.roll(onehot, 1, 0)}
