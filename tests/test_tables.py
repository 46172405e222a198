"""The complexity table's measured exponents match Vaswani et al. Table 1."""
from experiments import tables


def test_complexity_exponents():
  ns, ds = (64, 128, 256), (32, 64, 128)
  for name, _, (en, ed), count in tables.LAYERS:
    sn = tables.slope(ns, [count(n, 64) for n in ns])
    sd = tables.slope(ds, [count(128, d) for d in ds])
    assert abs(sn - en) < 0.1 and abs(sd - ed) < 0.1, (name, sn, sd)


def test_parameter_counts_match_the_papers(capsys):
  """Within 3% of the published size, every row (GPT-2: the released
  checkpoints' counts)."""
  tables.params()
  rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")][2:]
  assert len(rows) == 8
  for row in rows:
    _, name, published, ours, gap, note, _ = row.split("|")
    assert abs(float(gap.strip().rstrip("%"))) <= 3.0, row


def fake_run(root, name, model, steps, speeds, accuracy, test=None):
  """A classification run's files as the trainer writes them: config.json,
  metrics.jsonl (steps/s per logging window, evals) and, when finished,
  test.json."""
  import json
  import os
  wd = os.path.join(root, name)
  os.makedirs(wd)
  json.dump({"model": model, "total_steps": steps, "data": {"source": "fmnist"}},
            open(os.path.join(wd, "config.json"), "w"))
  rows = [{"step": 0, "model/params": 1000}]
  for i, sps in enumerate(speeds, 1):
    step = i * steps // len(speeds)
    rows += [{"step": step, "train/steps_per_sec": sps, "time/wall_sec": 60.0 * i},
             {"step": step, "eval/accuracy": accuracy}]
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  if test is not None:
    json.dump({"test/accuracy": test}, open(os.path.join(wd, "test.json"), "w"))
  return wd


def test_equal_time_table_reads_train_minutes_and_each_test_once(tmp_path, capsys):
  import os
  import pytest
  swin = {"name": "swin", "width": 48, "depths": [2, 4], "window": 7}
  local = {"name": "resnet", "variant": "18", "width": 16, "spatial": "local",
           "nonlocal_stages": []}
  a = fake_run(tmp_path, "a", swin, 600, [2.0, 2.0, 2.0], 0.8, test=0.75)
  b = fake_run(tmp_path, "b", local, 60, [0.25, 0.25], 0.5, test=0.45)
  tables.equal_time(a, b)
  rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")][2:]
  # a: steps 200 -> 600 at 2 steps/s = 200 s; b: 30 -> 60 at 0.25 = 120 s.
  assert rows[0] == ("| a | Swin w48, blocks (2, 4), M = 7 | 0.00 M | 600 | 3.3 | 3.0 | "
                     "80.0% | 75.0% |")
  assert rows[1] == "| b | ResNet-18 w16, local attention | 0.00 M | 60 | 2.0 | 2.0 | 50.0% | 45.0% |"
  assert os.path.exists(tmp_path / "equal_time_fmnist.png")
  unfinished = fake_run(tmp_path, "c", swin, 600, [2.0], 0.8)
  with pytest.raises(SystemExit, match="test.json is missing"):
    tables.equal_time(a, unfinished)


def fake_caption_run(root, name, attention, seed, bleu4, val_bleu4):
  import json
  import os
  wd = os.path.join(root, name)
  os.makedirs(wd)
  json.dump({"caption": {"attention": attention}, "seed": seed, "total_steps": 100},
            open(os.path.join(wd, "config.json"), "w"))
  rows = [{"step": 50, "train/steps_per_sec": 1.0, "train/loss": 9.0, "time/wall_sec": 60.0},
          {"step": 100, "train/steps_per_sec": 2.0, "train/loss": 8.0, "time/wall_sec": 90.0},
          {"step": 100, "eval/loss": 3.0, "eval/bleu4": val_bleu4}]
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  json.dump({**{f"test/bleu{n}": bleu4 * (5 - n) for n in (1, 2, 3, 4)},
             "test/distinct_bleu4": bleu4 / 2}, open(os.path.join(wd, "test.json"), "w"))
  return wd


def test_soft_vs_hard_table_gives_each_kinds_mean_and_spread_over_seeds(tmp_path, capsys):
  import os
  runs = [fake_caption_run(tmp_path, "soft_s0", "soft", 0, 2.0, 3.0),
          fake_caption_run(tmp_path, "soft_s1", "soft", 1, 4.0, 5.0),
          fake_caption_run(tmp_path, "hard_s0", "hard", 0, 1.0, 1.5)]
  tables.soft_vs_hard(*runs)
  rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")]
  # Steps 50 -> 100 at 2/s = 25 s of training; 90 s of wall clock.
  assert rows[2] == ("| soft_s0 | soft | 0 | 100 | 0.4 | 1.5 | 3.00 | 8.00 | 6.00 | 4.00 | 2.00 "
                     "| 1.00 |")
  # BLEU-4 of the soft seeds: 2 and 4 -> mean 3, sample standard deviation 1.41.
  assert rows[-2] == ("| soft | 2 | 4.00 +- 1.41 | 12.00 +- 5.66 | 9.00 +- 4.24 | "
                      "6.00 +- 2.83 | 3.00 +- 1.41 | 1.50 +- 0.71 |")
  assert rows[-1].startswith("| hard | 1 | 1.50 +- 0.00 | 4.00 +- 0.00")
  assert os.path.exists(tmp_path / "captions_soft_vs_hard.png")
