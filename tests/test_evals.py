"""Sharded evaluators: 8 devices give what 1 device gives, padded rows count
zero times, and every metric equals a naive numpy version of its formula."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import portpicker
import pytest

from attnlab import sharding as sharding_lib
from attnlab.evals import knn, linear_probe, retrieval, sharded, zero_shot
import eval_worker

EIGHT = sharding_lib.make_mesh((("data", -1),))
ONE = sharding_lib.make_mesh((("data", 1),), jax.devices()[:1])


def test_padded_rows_count_zero_times_and_rows_come_back_in_order():
  c = eval_worker.columns()  # 13 rows: batches of 8 leave 3 padded rows
  for mesh in (EIGHT, ONE):
    total = sharded.sums(eval_worker.double, 2.0, sharded.batches({"x": c["x"]}, 8, mesh))
    # "ones" is 1 on every row the function sees, padding included.
    assert total["count"] == 13 and total["ones"] == 13
    np.testing.assert_allclose(total["y"], 2 * c["x"].sum(), rtol=1e-5)
    out = sharded.rows(eval_worker.double, 2.0, sharded.batches({"x": c["x"]}, 8, mesh))
    np.testing.assert_array_equal(out["y"], 2 * c["x"])
    # The same rows from a random-access source, each read exactly once.
    source = eval_worker.Rows(c["x"])
    out = sharded.rows(eval_worker.double, 2.0, sharded.batches(source, 8, mesh))
    np.testing.assert_array_equal(out["y"], 2 * c["x"])
    assert sorted(source.read) == list(range(13))
  with pytest.raises(ValueError, match="multiple of the mesh's 8"):
    next(sharded.batches({"x": c["x"]}, 4, EIGHT))


def test_two_hosts_gather_what_one_host_computes(tmp_path):
  port = portpicker.pick_unused_port()
  env = {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
         "JAX_NUM_CPU_DEVICES": "2"}
  import os
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(os.path.dirname(__file__), "eval_worker.py"),
       str(tmp_path / "two.npz")], env=dict(os.environ, **env, JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  two = np.load(tmp_path / "two.npz")
  one = eval_worker.results(sharding_lib.make_mesh((("data", 4),), jax.devices()[:4]))
  assert two["count"] == 13 and two["ones"] == 13
  # Process 0 of 2 read only its own rows of the source: 2 of each batch
  # of 4, 0-1, 4-5, 8-9, 12.
  assert two["source_reads"] == 7
  for key in set(one) - {"source_reads"}:
    np.testing.assert_allclose(two[key], one[key], rtol=1e-6)


def naive_knn(train, train_labels, queries, num_classes, k, t):
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  preds = []
  for q in unit(queries):
    sim = unit(train) @ q
    votes = np.zeros(num_classes)
    for j in np.argsort(-sim)[:k]:
      votes[train_labels[j]] += np.exp(sim[j] / t)
    preds.append(votes.argmax())
  return np.array(preds)


def test_knn_equals_naive_vote():
  rng = np.random.default_rng(1)
  train, labels = rng.normal(size=(50, 6)), rng.integers(0, 4, 50)
  queries, qlabels = rng.normal(size=(21, 6)), rng.integers(0, 4, 21)
  want = (naive_knn(train, labels, queries, 4, 5, 0.07) == qlabels).mean()
  for mesh in (EIGHT, ONE):
    got = knn.knn_accuracy(train, labels, queries, qlabels, mesh, 4, k=5, batch_size=8)
    assert got == pytest.approx(want)
  assert 0 < want < 1  # a test that can tell right from wrong


def test_linear_probe_reaches_the_optimum_of_its_objective():
  """At the fitted probe the gradient of the (strictly convex) penalised
  cross-entropy, written out in numpy, vanishes; 8 devices find what 1 does."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(61, 5)).astype(np.float32)
  y = (x[:, 0] + 0.5 * rng.normal(size=61) > 0).astype(np.int32) + (x[:, 1] > 1)
  l2 = 1e-2
  probes = [linear_probe.fit(x, y, 3, l2, mesh, steps=200) for mesh in (EIGHT, ONE)]
  w, b = np.asarray(probes[0]["w"], np.float64), np.asarray(probes[0]["b"], np.float64)
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  residual = (p - np.eye(3)[y]) / len(x)
  assert np.abs(x.T @ residual + l2 * w).max() < 1e-4
  assert np.abs(residual.sum(0)).max() < 1e-4
  assert np.abs(w).max() > 0.1  # it learned something
  for a, b_ in zip(jax.tree.leaves(probes[0]), jax.tree.leaves(probes[1])):
    np.testing.assert_allclose(a, b_, rtol=1e-3, atol=1e-4)  # float sums reassociate
  probe, chosen, scores = linear_probe.select((x[:40], y[:40]), (x[40:], y[40:]), 3, ONE,
                                              l2_grid=(1e-3, 1.0), steps=100)
  assert chosen in scores and scores[chosen] == max(scores.values())


def test_zero_shot_equals_numpy():
  rng = np.random.default_rng(3)
  prompts = rng.normal(size=(6, 3, 4))  # 6 classes, 3 templates
  images, labels = rng.normal(size=(19, 4)), rng.integers(0, 6, 19)
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  classes = unit(unit(prompts).mean(1))
  order = np.argsort(-(unit(images) @ classes.T), axis=1)
  want1 = (order[:, 0] == labels).mean()
  want5 = np.mean([labels[i] in order[i, :5] for i in range(19)])
  for mesh in (EIGHT, ONE):
    got = zero_shot.zero_shot_accuracy(images, labels, prompts, mesh, batch_size=8)
    assert got["top1"] == pytest.approx(want1) and got["top5"] == pytest.approx(want5)
    assert got["majority"] == pytest.approx(np.bincount(labels).max() / 19)
    per_class = [np.mean(order[labels == c, 0] == c) for c in np.unique(labels)]
    assert got["mean_per_class"] == pytest.approx(np.mean(per_class))
  assert want1 < want5


def test_retrieval_recall_equals_naive_ranking():
  """Two captions per image; image->text finds an image when either caption
  ranks in the top K."""
  rng = np.random.default_rng(4)
  images = rng.normal(size=(9, 5))
  text_image = np.repeat(np.arange(9), 2)
  texts = images[text_image] + 1.5 * rng.normal(size=(18, 5))
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  sim = unit(images) @ unit(texts).T
  want = {}
  for k in (1, 5):
    i2t = [bool(set(np.argsort(-sim[i])[:k]) & set(np.nonzero(text_image == i)[0]))
           for i in range(9)]
    t2i = [text_image[t] in np.argsort(-sim[:, t])[:k] for t in range(18)]
    want[f"image_to_text/r@{k}"], want[f"text_to_image/r@{k}"] = np.mean(i2t), np.mean(t2i)
  for mesh in (EIGHT, ONE):
    got = retrieval.retrieval_recall(images, texts, text_image, mesh, ks=(1, 5),
                                     batch_size=8)
    assert got == pytest.approx(want)
  assert 0 < want["text_to_image/r@1"] < 1


def test_retrieval_with_shared_ids_finds_any_image_of_the_item():
  """Images 0-1 and 2-3 are one item each (an emoji in two styles): a
  caption of item 0 finds it at either image, and an image finds any
  caption of its item; naive ranking as above."""
  rng = np.random.default_rng(5)
  ids = np.array([0, 0, 1, 1, 2, 3, 4, 5, 6])
  images = rng.normal(size=(9, 5))
  text_image = np.array([0, 0, 2, 4, 5, 6, 7, 8])  # each caption names one image of its item
  texts = images[text_image] + 1.5 * rng.normal(size=(8, 5))
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  sim = unit(images) @ unit(texts).T
  text_ids = ids[text_image]
  want = {}
  for k in (1, 3):
    i2t = [bool(set(text_ids[np.argsort(-sim[i])[:k]]) & {ids[i]}) for i in range(9)]
    t2i = [text_ids[t] in ids[np.argsort(-sim[:, t])[:k]] for t in range(8)]
    want[f"image_to_text/r@{k}"], want[f"text_to_image/r@{k}"] = np.mean(i2t), np.mean(t2i)
  for mesh in (EIGHT, ONE):
    got = retrieval.retrieval_recall(images, texts, text_image, mesh, ks=(1, 3),
                                     batch_size=8, image_ids=ids)
    assert got == pytest.approx(want)
  plain = retrieval.retrieval_recall(images, texts, text_image, ONE, ks=(1, 3), batch_size=8)
  assert plain != pytest.approx(want)  # the ids change the answer
