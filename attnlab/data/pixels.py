"""uint8 arrays [H, W, C] (C = 1 or 3) <-> PIL images, for the image ops."""
import numpy as np


def _pil(image):
  from PIL import Image
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(pil, channels):
  a = np.asarray(pil, np.uint8)
  return a[..., None] if a.ndim == 2 else a[..., :channels]
