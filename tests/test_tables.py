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
