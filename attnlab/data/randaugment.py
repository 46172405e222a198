"""RandAugment (Cubuk et al. 2020) as the ViT recipes use it: `randaug(N, M)`
in a pp string applies N transformations drawn uniformly (with replacement)
from the 16 below, each at magnitude M.

The operations and the magnitude -> argument maps are those of the
TensorFlow TPU implementation that big_vision's i1k recipes
(`randaug(2, 10|15|20)`, Steiner et al. 2021) were tuned with, so that the
recipe's M means the same here. M is on a scale where 10 is "full"
(rotation 30 degrees, shear 0.3) and may exceed it; the quirks come along
(Posterize at M=0 keeps 0 bits, a black image; Solarize's threshold grows
with M, so it does less). Translation and Cutout are given in pixels of a
224 image there (100 and 40); here they are that fraction of the image's
size, so small images are not translated out of the frame. Geometric ops
fill with grey 128.

Images are uint8 [H, W, C] with C = 1 or 3 (before `value_range`).
"""
import numpy as np

from attnlab.data.pixels import _array, _pil

MAX_LEVEL = 10.0
FILL = 128
TRANSLATE = 100 / 224  # of the image's size, at M = 10
CUTOUT = 40 / 224       # half the side of the cut square, at M = 10


def _with_pil(fn):
  """An op written on PIL images, applied to a uint8 array."""
  return lambda image, *args: _array(fn(_pil(image), *args), image.shape[-1])


def _fill(image):
  return (FILL,) * image.shape[-1] if image.shape[-1] > 1 else FILL


def _affine(image, coeffs):
  """PIL's inverse affine map: output (x, y) reads input (a x + b y + c, d x + e y + f)."""
  from PIL import Image
  pil = _pil(image)
  return _array(pil.transform(pil.size, Image.AFFINE, coeffs, Image.NEAREST,
                              fillcolor=_fill(image)), image.shape[-1])


def auto_contrast(image):
  from PIL import ImageOps
  return _with_pil(ImageOps.autocontrast)(image)


def equalize(image):
  from PIL import ImageOps
  return _with_pil(ImageOps.equalize)(image)


def invert(image):
  return 255 - image


def rotate(image, degrees):
  from PIL import Image
  pil = _pil(image)
  return _array(pil.rotate(degrees, Image.NEAREST, fillcolor=_fill(image)), image.shape[-1])


def posterize(image, bits):
  """Keep the `bits` high bits of every value (0 bits: black)."""
  shift = 8 - bits
  return ((image.astype(np.int32) >> shift) << shift).astype(np.uint8)


def solarize(image, threshold):
  """Values at or above `threshold` inverted."""
  return np.where(image < threshold, image, 255 - image).astype(np.uint8)


def solarize_add(image, addition, threshold=128):
  """`addition` added to values below `threshold`, clipped to 255."""
  added = np.clip(image.astype(np.int32) + addition, 0, 255).astype(np.uint8)
  return np.where(image < threshold, added, image)


def _enhance(kind):
  def fn(image, factor):
    from PIL import ImageEnhance
    return _with_pil(lambda pil: getattr(ImageEnhance, kind)(pil).enhance(factor))(image)
  return fn


color, contrast, brightness, sharpness = map(
    _enhance, ("Color", "Contrast", "Brightness", "Sharpness"))


def shear_x(image, level):
  return _affine(image, (1, level, 0, 0, 1, 0))


def shear_y(image, level):
  return _affine(image, (1, 0, 0, level, 1, 0))


def translate_x(image, pixels):
  """Content moved right by `pixels` (left when negative)."""
  return _affine(image, (1, 0, -pixels, 0, 1, 0))


def translate_y(image, pixels):
  return _affine(image, (1, 0, 0, 0, 1, -pixels))


def cutout(image, half, rng):
  """A square of side 2 * half (clipped at the border) around a random
  centre filled with grey."""
  h, w = image.shape[:2]
  cy, cx = rng.integers(0, h), rng.integers(0, w)
  out = image.copy()
  out[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half] = FILL
  return out


def _signed(value, rng):
  return value if rng.uniform() < 0.5 else -value


def _enhance_factor(m):
  return m / MAX_LEVEL * 1.8 + 0.1


# name -> (image, magnitude, rng) -> image
OPS = {
    "AutoContrast": lambda x, m, rng: auto_contrast(x),
    "Equalize": lambda x, m, rng: equalize(x),
    "Invert": lambda x, m, rng: invert(x),
    "Rotate": lambda x, m, rng: rotate(x, _signed(m / MAX_LEVEL * 30.0, rng)),
    "Posterize": lambda x, m, rng: posterize(x, int(m / MAX_LEVEL * 4)),
    "Solarize": lambda x, m, rng: solarize(x, int(m / MAX_LEVEL * 256)),
    "Color": lambda x, m, rng: color(x, _enhance_factor(m)),
    "Contrast": lambda x, m, rng: contrast(x, _enhance_factor(m)),
    "Brightness": lambda x, m, rng: brightness(x, _enhance_factor(m)),
    "Sharpness": lambda x, m, rng: sharpness(x, _enhance_factor(m)),
    "ShearX": lambda x, m, rng: shear_x(x, _signed(m / MAX_LEVEL * 0.3, rng)),
    "ShearY": lambda x, m, rng: shear_y(x, _signed(m / MAX_LEVEL * 0.3, rng)),
    "TranslateX": lambda x, m, rng: translate_x(
        x, round(_signed(m / MAX_LEVEL * TRANSLATE * x.shape[1], rng))),
    "TranslateY": lambda x, m, rng: translate_y(
        x, round(_signed(m / MAX_LEVEL * TRANSLATE * x.shape[0], rng))),
    "Cutout": lambda x, m, rng: cutout(
        x, round(m / MAX_LEVEL * CUTOUT * min(x.shape[:2])), rng),
    "SolarizeAdd": lambda x, m, rng: solarize_add(x, int(m / MAX_LEVEL * 110)),
}
NAMES = tuple(OPS)


def randaugment(image, rng, num_layers, magnitude):
  """`num_layers` ops drawn uniformly from OPS, each applied at `magnitude`."""
  if image.dtype != np.uint8:
    raise ValueError(f"randaug needs uint8 images, got {image.dtype}: put it before "
                     "value_range / normalize in the pp string")
  for _ in range(num_layers):
    image = OPS[NAMES[rng.integers(len(NAMES))]](image, magnitude, rng)
  return image
