"""Weighted k-nearest-neighbour classification of frozen features (Wu et al.
2018, as DINO evaluates: cosine similarity, the k = 20 nearest training
features each vote for their class with weight exp(similarity / 0.07)).

The bank of training features is replicated on every device and the query
features are split over the mesh (sharded.batches), so each device ranks
its own queries against the whole bank.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import sharding as sharding_lib
from attnlab.evals import accuracy, sharded


def normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_scores(queries, bank, bank_labels, num_classes, k=20, temperature=0.07):
  """Class votes [M, C] for queries [M, D] from a bank [N, D] with labels [N]."""
  sim = normalize(queries) @ normalize(bank).T
  top, idx = jax.lax.top_k(sim, min(k, bank.shape[0]))
  votes = jnp.exp(top / temperature)
  return jnp.einsum("mk,mkc->mc", votes, jax.nn.one_hot(bank_labels[idx], num_classes))


@dataclasses.dataclass(frozen=True)
class _KNN:  # hashable by value: one compile per setting
  num_classes: int
  k: int
  temperature: float

  def __call__(self, bank, batch):
    scores = knn_scores(batch["features"], bank["features"], bank["labels"],
                        self.num_classes, self.k, self.temperature)
    return {"correct": accuracy.topk_correct(scores, batch["labels"])}


def knn_accuracy(train_features, train_labels, features, labels, mesh, num_classes,
                 k=20, temperature=0.07, batch_size=256):
  """Top-1 accuracy of the k-NN classifier on (features, labels)."""
  batch_size = sharded.round_to_devices(batch_size, mesh)
  bank = jax.device_put({"features": jnp.asarray(train_features),
                         "labels": jnp.asarray(train_labels, jnp.int32)},
                        sharding_lib.replicated(mesh))
  out = sharded.sums(_KNN(num_classes, k, float(temperature)), bank, sharded.batches(
      {"features": np.asarray(features), "labels": np.asarray(labels, np.int32)},
      batch_size, mesh))
  return out["correct"] / out["count"]
