"""Zero-shot classification with a two-tower model (Radford et al. 2021):
each class is the normalised mean of its prompts' normalised text
embeddings ("a photo of a {}." and other templates); an image's class is the
one whose embedding is most similar to the image's."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import sharding as sharding_lib
from attnlab.evals import accuracy, sharded
from attnlab.evals.knn import normalize


def class_embeddings(prompt_embeddings):
  """[C, P, D] text embeddings of P prompts per class -> [C, D]."""
  return normalize(jnp.mean(normalize(prompt_embeddings), axis=1))


@dataclasses.dataclass(frozen=True)
class _ZeroShot:
  ks: tuple

  def __call__(self, classes, batch):
    scores = normalize(batch["features"]) @ classes.T
    return {"label": batch["labels"],
            **{f"top{k}": accuracy.topk_correct(scores, batch["labels"], k) for k in self.ks}}


def zero_shot_accuracy(image_features, labels, prompt_embeddings, mesh, ks=(1, 5),
                       batch_size=256):
  """{"top1", "top5", "mean_per_class", "majority"} over the images.

  Where classes are unbalanced (an emoji category holding every skin tone)
  top-1 is read against `majority`, the top-1 of always answering the most
  frequent class, not against 1 / classes; `mean_per_class` (the mean of
  each class's top-1, as CLIP reports for unbalanced sets) has 1 / classes
  as its chance whatever the balance."""
  batch_size = sharded.round_to_devices(batch_size, mesh)
  classes = jax.device_put(class_embeddings(jnp.asarray(prompt_embeddings)),
                           sharding_lib.replicated(mesh))
  ks = tuple(k for k in ks if k <= classes.shape[0])
  got = sharded.rows(_ZeroShot(ks), classes, sharded.batches(
      {"features": np.asarray(image_features), "labels": np.asarray(labels, np.int32)},
      batch_size, mesh))
  label = got["label"]
  return {**{f"top{k}": float(got[f"top{k}"].mean()) for k in ks},
          "mean_per_class": float(np.mean([got["top1"][label == c].mean()
                                           for c in np.unique(label)])),
          "majority": float(np.bincount(label).max() / len(label))}
