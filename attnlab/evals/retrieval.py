"""Image-text retrieval recall@K (as CLIP reports on Flickr30k and COCO):
every image has one or more captions; image->text counts an image as found
when any of its captions ranks in the top K, text->image when a caption's
own image does. Similarities are cosines; the queries are split over the
mesh and each device ranks its queries against the whole gallery."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import sharding as sharding_lib
from attnlab.evals import sharded
from attnlab.evals.knn import normalize


@dataclasses.dataclass(frozen=True)
class _Recall:
  ks: tuple

  def __call__(self, gallery, batch):
    """Ranks each query's best positive among all gallery rows."""
    sim = normalize(batch["features"]) @ normalize(gallery["features"]).T  # [B, G]
    positive = batch["ids"][:, None] == gallery["ids"][None, :]
    best = jnp.max(jnp.where(positive, sim, -jnp.inf), axis=1, keepdims=True)
    rank = jnp.sum((sim > best) & ~positive, axis=1)  # gallery rows ahead of it
    return {f"r@{k}": (rank < k).astype(jnp.float32) for k in self.ks}


def _recall(queries, query_ids, gallery, gallery_ids, mesh, ks, batch_size):
  batch_size = sharded.round_to_devices(batch_size, mesh)
  gallery = jax.device_put({"features": jnp.asarray(gallery),
                            "ids": jnp.asarray(gallery_ids, jnp.int32)},
                           sharding_lib.replicated(mesh))
  out = sharded.sums(_Recall(tuple(ks)), gallery, sharded.batches(
      {"features": np.asarray(queries), "ids": np.asarray(query_ids, np.int32)},
      batch_size, mesh))
  return {f"r@{k}": out[f"r@{k}"] / out["count"] for k in ks}


def retrieval_recall(image_features, text_features, text_image, mesh, ks=(1, 5, 10),
                     batch_size=256, image_ids=None):
  """{"image_to_text/r@K", "text_to_image/r@K"} for images [Ni, D], captions
  [Nt, D] and the image index of each caption [Nt]. `image_ids` [Ni]
  (default: each image its own) makes images that share an id one item: a
  caption then finds any of them (an emoji drawn in two art styles)."""
  images = np.arange(len(image_features)) if image_ids is None else np.asarray(image_ids)
  text_ids = images[np.asarray(text_image)]
  i2t = _recall(image_features, images, text_features, text_ids, mesh, ks, batch_size)
  t2i = _recall(text_features, text_ids, image_features, images, mesh, ks, batch_size)
  return ({f"image_to_text/{k}": v for k, v in i2t.items()}
          | {f"text_to_image/{k}": v for k, v in t2i.items()})
