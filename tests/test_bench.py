"""The benchmarks' timing protocol: alternating windows, median ratio."""
import types

from experiments import bench


def test_windows_alternate_and_ratio_is_the_median_of_rounds(monkeypatch):
  clock, calls = [0.0], []
  monkeypatch.setattr(bench, "time", types.SimpleNamespace(
      perf_counter=lambda: clock[0]))

  def window(name, durations):
    durations = iter(durations)

    def run():
      calls.append(name)
      clock[0] += next(durations)
    return run
  # B's second round hits a slow spell (5x); the median ignores it, the
  # spread shows it.
  times = bench.interleaved({"A": window("A", [1.0, 1.0, 1.0]),
                             "B": window("B", [2.0, 10.0, 2.5])}, rounds=3)
  assert calls == ["A", "B"] * 3
  assert times == {"A": [1.0, 1.0, 1.0], "B": [2.0, 10.0, 2.5]}
  assert bench.ratio_summary(times, "B", "A") == (2.5, 2.0, 10.0)
