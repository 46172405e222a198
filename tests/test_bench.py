"""The benchmarks' timing protocol: alternating windows, median ratio."""
import types

from benchmarks import timing


def test_windows_alternate_and_ratio_is_the_median_of_rounds(monkeypatch):
  clock, calls = [0.0], []
  monkeypatch.setattr(timing, "time", types.SimpleNamespace(
      perf_counter=lambda: clock[0]))

  def window(name, durations):
    durations = iter(durations)

    def run():
      calls.append(name)
      clock[0] += next(durations)
    return run
  # B's second round hits a slow spell (5x); the median ignores it, the
  # spread shows it.
  times = timing.interleaved({"A": window("A", [1.0, 1.0, 1.0]),
                             "B": window("B", [2.0, 10.0, 2.5])}, rounds=3)
  assert calls == ["A", "B"] * 3
  assert times == {"A": [1.0, 1.0, 1.0], "B": [2.0, 10.0, 2.5]}
  assert timing.ratio_summary(times, "B", "A") == (2.5, 2.0, 10.0)


def test_op_profile_attributes_traced_ops_to_their_source(capsys):
  """One traced step's ops are mapped back to the code that made them (the
  HLO's op_name), layer numbers folded, and grouped by kind."""
  import re

  import jax
  import jax.numpy as jnp

  def step(state, batch):  # one matmul and one elementwise op, by name
    with jax.named_scope("encoderblock_3"):
      y = jnp.tanh(state @ batch)
    return state, {"y": y}
  x = jnp.ones((256, 256))
  timing.op_profile(timing.Stepper(jax.jit(step), x, x), top=5)
  out = capsys.readouterr().out
  assert "matmuls and convolutions" in out and "other elementwise" in out, out
  assert re.search(r"% +L/dot_general", out), out  # encoderblock_3 folded to L
  shares = [float(m) for m in re.findall(r"ms +([\d.]+)% +[a-z]", out.split("top")[0])]
  assert abs(sum(shares) - 100) < 0.5, out


def test_op_profile_names_the_guarded_update_loop_the_optimizer(capsys):
  """XLA fuses an elementwise update and the NaN guard's select around it
  into one loop named after its root, the select: the profile must report
  that loop as the optimizer's update, not as the guard's cost."""
  import jax
  import jax.numpy as jnp

  def step(params, grads):
    finite = jnp.isfinite(jnp.sum(grads))
    new = params - 0.1 * grads * jax.lax.rsqrt(grads * grads + 1e-8)
    return jnp.where(finite, new, params), {"n": jnp.sum(new)}
  x = jnp.ones((1024, 1024))
  timing.op_profile(timing.Stepper(jax.jit(step), x, x), top=5)
  out = capsys.readouterr().out
  assert "optimizer update (one fused loop per parameter)" in out, out
  assert "selects" not in out.split("top")[0], out
