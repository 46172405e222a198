"""Recurrent layers: flax's cells, stacked, with the carry passed in and out.

Cells (flax.linen):
  rnn   vanilla (Elman) RNN: h_t = tanh(W_xh x_t + W_hh h_{t-1} + b)
  lstm  LSTM (Hochreiter & Schmidhuber 1997), carry (c, h)
  gru   GRU (Cho et al. 2014)
"""
import flax.linen as nn
import jax.numpy as jnp

CELLS = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}
# Weight matrices per cell: an LSTM has 4 gates, a GRU 3, a vanilla RNN 1.
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def matmul_flops_per_token(cell, input_size, hidden, num_layers):
  """Forward FLOPs of the stack's matmuls for one token (2 per multiply-add)."""
  flops, x = 0, input_size
  for _ in range(num_layers):
    flops += 2 * GATES[cell] * hidden * (x + hidden)
    x = hidden
  return flops


def zero_carry(cell, hidden, num_layers, batch, dtype=jnp.float32):
  """Initial state of a stack: one carry per layer, leading batch axis."""
  h = jnp.zeros((batch, hidden), dtype)
  return tuple((h, h) if cell == "lstm" else h for _ in range(num_layers))


def cell_state(cell, carry):
  """What the interpretability figures show: tanh(c) for an LSTM (Karpathy
  et al. 2015 plot the cell, squashed to [-1, 1]), h for the others."""
  return jnp.tanh(carry[0]) if cell == "lstm" else carry


class _CarryAsOutput(nn.Module):
  """Runs a flax cell and emits its whole carry at every step (c and h)."""
  cell: str
  hidden: int
  dtype: jnp.dtype = jnp.float32
  num_feature_axes = 1

  @nn.compact
  def __call__(self, carry, x):
    carry, _ = CELLS[self.cell](features=self.hidden, dtype=self.dtype,
                                name="cell")(carry, x)
    return carry, carry


class StackedRNN(nn.Module):
  """`num_layers` recurrent layers over [B, T, D] inputs.

  Returns (outputs [B, T, H], new carry, per-layer cell states [B, T, H]).
  Dropout (Zaremba et al. 2014) is applied between layers, not on the
  recurrent connection.
  """
  cell: str
  hidden: int
  num_layers: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, carry, train=False):
    new_carry, states = [], []
    for i in range(self.num_layers):
      cell = _CarryAsOutput(self.cell, self.hidden, self.dtype,
                            name=f"layer_{i}")
      layer_carry, seq = nn.RNN(cell, return_carry=True)(
          x, initial_carry=carry[i])
      x = seq[1] if self.cell == "lstm" else seq
      new_carry.append(layer_carry)
      states.append(cell_state(self.cell, seq))
      if i < self.num_layers - 1:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x, tuple(new_carry), states
