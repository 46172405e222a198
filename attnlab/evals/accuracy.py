"""Top-k accuracy of classifier scores, per row (sum it with sharded.sums)."""
import jax
import jax.numpy as jnp


def topk_correct(scores, labels, k=1):
  """[B] 1.0 where the label is among the k highest scores [B, C], else 0."""
  _, top = jax.lax.top_k(scores, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
