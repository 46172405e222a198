"""Attention of the RNN era: a decoder state scores a set of annotations.

Single-head scores take q [B, Tq, Dq] and k [B, Tk, Dk] and return scores
[B, Tq, Tk]:
  dot_score         q . k                          (Luong "dot")
  scaled_dot_score  q . k / sqrt(d)                (Vaswani et al. 2017)
  BilinearScore     q^T W k                        (Luong "general")
  AdditiveScore     v^T tanh(W q + U k)            (Bahdanau et al. 2015; Luong "concat")
`attend(scores, values, mask)` turns scores into weights and a context.
Location-based attention moves a Gaussian-mixture window along the memory
instead of scoring content (`GravesAttention`).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

# Finite, so a row with no visible key gives zeros instead of NaN.
NEG_INF = -1e30

# --- single-head scores (RNN-era attention) ----------------------------------
def dot_score(q, k):
  """[B, Tq, D] x [B, Tk, D] -> [B, Tq, Tk]."""
  return jnp.einsum("bqd,bkd->bqk", q, k)


def scaled_dot_score(q, k):
  return dot_score(q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)


class BilinearScore(nn.Module):
  """Luong et al. (2015) "general": q^T W k."""

  @nn.compact
  def __call__(self, q, k):
    w = self.param("W", nn.initializers.lecun_normal(), (q.shape[-1], k.shape[-1]))
    return jnp.einsum("bqd,de,bke->bqk", q, w, k)


class AdditiveScore(nn.Module):
  """Bahdanau et al. (2015) eq. 6 / Luong "concat": v^T tanh(W q + U k).

  A decoder projects the encoder states once per sentence with
  `project_keys` and passes them as `keys_projected`, instead of computing
  U k at every output step (Bahdanau et al., appendix A).
  """
  hidden: int

  def setup(self):
    self.W = nn.Dense(self.hidden, use_bias=False)
    self.U = nn.Dense(self.hidden)
    self.v = self.param("v", nn.initializers.lecun_normal(), (self.hidden, 1))

  def project_keys(self, k):
    return self.U(k)

  def __call__(self, q, k=None, keys_projected=None):
    uk = self.U(k) if keys_projected is None else keys_projected
    e = jnp.tanh(self.W(q)[:, :, None, :] + uk[:, None, :, :])
    return (e @ self.v)[..., 0]


def masked_softmax(scores, mask=None):
  """Softmax over the last axis; masked entries (False) get weight 0, and a
  row with nothing visible gets all zeros."""
  if mask is None:
    return jax.nn.softmax(scores, axis=-1)
  scores = jnp.where(mask, scores, NEG_INF)
  return jax.nn.softmax(scores, axis=-1) * mask


def attend(scores, values, mask=None):
  """weights = softmax(scores) [.., Tq, Tk]; context = weights @ values."""
  weights = masked_softmax(scores, mask)
  return jnp.einsum("...qk,...kd->...qd", weights, values), weights


# --- location-based attention (Graves 2013) ----------------------------------
class GravesAttention(nn.Module):
  """Gaussian-mixture window over a memory, for monotonic alignment
  (Graves 2013, "Generating Sequences With RNNs", eqs. 46-51):

    (a^, b^, k^) = W h_t + b;  alpha = exp(a^), beta = exp(b^)
    kappa_t = kappa_{t-1} + exp(k^)             (the window only moves on)
    phi(t, u) = sum_k alpha_k exp(-beta_k (kappa_k - u)^2)
    w_t = sum_u phi(t, u) c_u

  The weights phi are not normalised (as in the paper). Returns (w_t [B, D],
  kappa_t [B, K], phi [B, U]).
  """
  num_components: int = 10

  @nn.compact
  def __call__(self, h, kappa_prev, memory, memory_valid=None):
    params = nn.Dense(3 * self.num_components, name="window")(h)
    a_hat, b_hat, k_hat = jnp.split(params, 3, axis=-1)
    alpha, beta = jnp.exp(a_hat), jnp.exp(b_hat)
    kappa = kappa_prev + jnp.exp(k_hat)
    u = jnp.arange(memory.shape[1], dtype=h.dtype)
    phi = jnp.sum(alpha[:, :, None] * jnp.exp(
        -beta[:, :, None] * (kappa[:, :, None] - u[None, None, :]) ** 2), axis=1)
    if memory_valid is not None:
      phi = phi * memory_valid
    return jnp.einsum("bu,bud->bd", phi, memory), kappa, phi
