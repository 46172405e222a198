"""Decoding shared by every autoregressive model: sampling (and, later, beam
search). A model is seen through `step(state, token [B]) -> (state, logits
[B, V])`, so recurrent models (state = carry) and cached Transformers (state
= key/value cache) decode the same way.
"""
import jax
import jax.numpy as jnp


def sample(step, state, first_token, length, rng, temperature=1.0):
  """Samples `length` tokens [B, length] after `first_token` [B].

  temperature 0 is greedy (argmax); otherwise softmax(logits / temperature).
  """
  def body(carry, key):
    state, token = carry
    state, logits = step(state, token)
    if temperature == 0:
      token = jnp.argmax(logits, -1)
    else:
      token = jax.random.categorical(key, logits / temperature, axis=-1)
    token = token.astype(first_token.dtype)
    return (state, token), token
  (state, _), tokens = jax.lax.scan(body, (state, first_token),
                                    jax.random.split(rng, length))
  return jnp.swapaxes(tokens, 0, 1), state
