"""The complexity table's measured exponents match Vaswani et al. Table 1."""
from experiments import tables


def test_complexity_exponents():
  ns, ds = (64, 128, 256), (32, 64, 128)
  for name, _, (en, ed), count in tables.LAYERS:
    sn = tables.slope(ns, [count(n, 64) for n in ns])
    sd = tables.slope(ds, [count(128, d) for d in ds])
    assert abs(sn - en) < 0.1 and abs(sd - ed) < 0.1, (name, sn, sd)
