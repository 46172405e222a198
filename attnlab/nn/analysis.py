"""Reading attention weights: where a network looks, and how spread out."""
import jax.numpy as jnp


def attention_rollout(weights, residual=0.5):
  """Attention rollout (Abnar & Zuidema 2020): how much each output token
  draws on each input token through all layers. Each layer's head-averaged
  weights are mixed with the identity for the residual connection, A' =
  (1 - residual) A + residual I, rows renormalised, and the layers
  multiplied from the first: R = A'_L ... A'_1. weights [B, layers, heads,
  T, T] -> R [B, T, T]."""
  a = weights.mean(2)
  a = (1 - residual) * a + residual * jnp.eye(a.shape[-1], dtype=a.dtype)
  a = a / a.sum(-1, keepdims=True)
  out = a[:, 0]
  for layer in range(1, a.shape[1]):
    out = a[:, layer] @ out
  return out


def attention_entropy(weights):
  """-sum_k w_k log w_k over the last axis of attention weights [..., Tk]:
  log Tk for uniform attention, 0 for one location. (Not
  jax.scipy.special.entr: its gradient is infinite at a weight that
  underflowed to 0, and the captioner's entropy bonus is differentiated.)"""
  return -jnp.sum(weights * jnp.log(jnp.maximum(weights, 1e-30)), -1)
