"""One process of the two-host evaluator test: sums, gathered rows and k-NN
over data every process holds, written to OUT.npz by process 0."""
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attnlab import sharding as sharding_lib  # noqa: E402
from attnlab.evals import knn, sharded  # noqa: E402


def double(params, batch):
  return {"y": batch["x"] * params, "ones": jax.numpy.ones(batch["x"].shape[0])}


def columns():
  rng = np.random.default_rng(0)
  return {"x": rng.normal(size=(13, 3)).astype(np.float32),
          "labels": rng.integers(0, 3, 13).astype(np.int32)}


class Rows:
  """columns() as a random-access source that records which rows it read."""

  def __init__(self, x):
    self.x, self.read = x, []

  def __len__(self):
    return len(self.x)

  def __getitem__(self, i):
    self.read.append(i)
    return {"x": self.x[i]}


def results(mesh):
  c = columns()
  out = sharded.rows(double, 2.0, sharded.batches({"x": c["x"]}, 4, mesh))
  source = Rows(c["x"])
  from_source = sharded.rows(double, 2.0, sharded.batches(source, 4, mesh))
  total = sharded.sums(double, 2.0, sharded.batches({"x": c["x"]}, 4, mesh))
  acc = knn.knn_accuracy(c["x"], c["labels"], c["x"][::-1], c["labels"][::-1], mesh,
                         num_classes=3, k=3, batch_size=4)
  return {"rows": out["y"], "rows_from_source": from_source["y"],
          "source_reads": len(source.read), "y_sum": total["y"], "ones": total["ones"],
          "count": total["count"], "knn": acc}


if __name__ == "__main__":
  sharding_lib.initialize_distributed()
  r = results(sharding_lib.make_mesh((("data", -1),)))
  if jax.process_index() == 0:
    np.savez(sys.argv[1], **r)
