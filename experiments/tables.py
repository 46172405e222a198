"""Paper tables reproduced from our code: `./launch.sh tables NAME`.

  complexity  Vaswani et al. (2017) Table 1, per-layer FLOPs of
              self-attention O(n^2 d), recurrent O(n d^2), convolutional
              O(k n d^2) and restricted self-attention O(r n d), measured by
              XLA's cost analysis for growing n and d; exponents fitted.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.nn import attention as att

NS = (128, 256, 512, 1024)
DS = (64, 128, 256, 512)
K, R = 3, 32


def flops(fn, *shapes):
  """FLOPs of fn at these input shapes, from XLA's HLO cost analysis."""
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  cost = jax.jit(fn).lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def self_attention(x):
  """softmax(x x^T / sqrt(d)) x for one head, q = k = v = x [1, n, d]."""
  q = x[:, :, None]
  return att.dot_product_attention(q, q, q, implementation="naive")


def restricted(x):
  q = x[:, :, None]
  return att.dot_product_attention(q, q, q, att.Mask(window=R), implementation="banded")


def recurrent(x, w):
  """h_t = tanh(W h_{t-1} + x_t), unrolled so every step is counted (XLA
  counts the body of a scan only once)."""
  h = jnp.zeros(x.shape[-1])
  for t in range(x.shape[1]):
    h = jnp.tanh(w @ h + x[0, t])
  return h


def convolutional(x, w):
  """1-D convolution, kernel K, d -> d channels."""
  return jax.lax.conv_general_dilated(x, w, (1,), "SAME",
                                      dimension_numbers=("NWC", "WIO", "NWC"))


LAYERS = [
    ("self-attention", "O(n^2 d)", (2, 1), lambda n, d: flops(self_attention, (1, n, d))),
    ("recurrent", "O(n d^2)", (1, 2), lambda n, d: flops(recurrent, (1, n, d), (d, d))),
    ("convolutional", "O(k n d^2)", (1, 2), lambda n, d: flops(convolutional, (1, n, d), (K, d, d))),
    (f"self-attention (restricted, r={R})", "O(r n d)", (1, 1),
     lambda n, d: flops(restricted, (1, n, d))),
]


def slope(xs, ys):
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def complexity():
  d0, n0 = 256, 512
  print("$ ./launch.sh tables complexity")
  print(f"FLOPs per layer from XLA cost analysis; n in {NS} at d={d0}, "
        f"d in {DS} at n={n0}\n")
  print(f"| layer | theory | n exponent (theory) | d exponent (theory) | "
        f"GFLOP at n={n0}, d={d0} |")
  print("| --- | --- | --- | --- | --- |")
  for name, theory, (en, ed), count in LAYERS:
    sn = slope(NS, [count(n, d0) for n in NS])
    sd = slope(DS, [count(n0, d) for d in DS])
    print(f"| {name} | {theory} | {sn:.2f} ({en}) | {sd:.2f} ({ed}) | "
          f"{count(n0, d0) / 1e9:.3f} |")


TABLES = {"complexity": complexity}


def main():
  name = sys.argv[1] if len(sys.argv) > 1 else ""
  if name not in TABLES:
    sys.exit(f"error: unknown table {name!r}; use one of {sorted(TABLES)}")
  TABLES[name]()


if __name__ == "__main__":
  main()
