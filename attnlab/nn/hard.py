"""Hard (stochastic) attention (Xu et al. 2015): sample one location instead
of averaging over all, and train the sampler with REINFORCE."""
import jax
import jax.numpy as jnp

from attnlab.nn.analysis import attention_entropy


def hard_attention(rng, weights, values):
  """Samples one location per query from `weights` [B, Tq, Tk] and returns
  its value as the context [B, Tq, D], the index [B, Tq] and log p(index).
  The deterministic counterpart ("soft" attention) is `attend`'s context,
  the expectation of this one."""
  logits = jnp.log(jnp.maximum(weights, 1e-30))
  index = jax.random.categorical(rng, logits, axis=-1)
  log_prob = jnp.take_along_axis(logits, index[..., None], -1)[..., 0]
  context = jnp.take_along_axis(values, index[..., None], axis=1)
  return context, index, log_prob


def reinforce_surrogate(log_prob, reward, baseline, weights,
                        entropy_weight=0.0, baseline_decay=0.9):
  """Surrogate loss whose gradient is Xu et al.'s (2015, eq. 12) estimator:
  the score function (reward - baseline) * d log p(s) with a moving-average
  baseline, plus an entropy bonus on the attention weights.

  log_prob [B, ...] of the sampled locations, reward [B] (e.g. the sample's
  log-likelihood of the target), weights [B, ..., Tk]. Returns (loss,
  new_baseline): add the loss to the likelihood loss, carry the baseline.
  """
  advantage = jax.lax.stop_gradient(reward - baseline)
  log_prob = log_prob.reshape(log_prob.shape[0], -1).sum(-1)
  loss = -jnp.mean(advantage * log_prob) - entropy_weight * jnp.mean(attention_entropy(weights))
  new_baseline = baseline_decay * baseline + (1 - baseline_decay) * jnp.mean(
      jax.lax.stop_gradient(reward))
  return loss, new_baseline
