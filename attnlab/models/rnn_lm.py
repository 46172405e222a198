"""Character-level recurrent language model (Karpathy's char-rnn; Graves 2013).

Many-to-many: every position predicts the next character. The carry comes in
and goes out, so training can carry it across consecutive windows (truncated
backprop through time) and sampling can feed one character at a time.
"""
import flax.linen as nn
import jax.numpy as jnp

from attnlab.nn import rnn


class RNNLM(nn.Module):
  vocab_size: int
  cell: str = "lstm"
  hidden: int = 256
  num_layers: int = 2
  embed: int = 64
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  def zero_carry(self, batch):
    return rnn.zero_carry(self.cell, self.hidden, self.num_layers, batch)

  @nn.compact
  def __call__(self, tokens, carry, train=False):
    """tokens [B, T] int -> logits [B, T, V], aux {carry, cells: L x [B, T, H]}."""
    x = nn.Embed(self.vocab_size, self.embed, name="embed")(tokens)
    x, carry, cells = rnn.StackedRNN(self.cell, self.hidden, self.num_layers,
                                     self.dropout, self.dtype, name="rnn")(
                                         x, carry, train)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.vocab_size, dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.float32), {"carry": carry, "cells": cells}
