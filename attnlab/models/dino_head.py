"""DINO's projection head (Caron et al. 2021, section 3.1 and Appendix):
a 3-layer MLP (hidden 2048, GELU) to a 256-wide bottleneck, L2
normalisation, then a weight-normalised linear layer without bias to K
outputs. With `norm_last_layer` each output's weight vector has norm 1
(weight normalisation without a learned scale, the authors' default for
ViT-S); without it the norm (`scale`) is learned."""
import flax.linen as nn
import jax
import jax.numpy as jnp

LAST_LAYER = "last_layer"  # DINO freezes last_layer (kernel, scale) in the first epoch


class WeightNormLinear(nn.Module):
  """y = x @ (g * v / ||v||).T with v [out, in]: one row per output.

  The rows layout (PyTorch's) makes each output's norm a reduction over the
  contiguous last axis. flax's nn.WeightNorm around a Dense normalises the
  columns of an [in, out] kernel instead, and XLA's CPU reduction over the
  leading axis of [256, 65536] is about 40x slower than over the trailing
  axis of its transpose (`python -m benchmarks dinohead`): with
  65,536 outputs it made the head most of a ViT-S step."""
  features: int
  use_scale: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    v = self.param("kernel", nn.initializers.truncated_normal(0.02), (self.features, x.shape[-1]))
    inv_norm = jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-24))
    if self.use_scale:
      inv_norm = inv_norm * self.param("scale", nn.initializers.ones, (self.features, 1))
    w = (v * inv_norm).astype(self.dtype)
    return jnp.einsum("...d,kd->...k", x.astype(self.dtype), w)


def matmul_flops(head, in_dim):
  """Forward matmul FLOPs of the head on one feature vector of in_dim."""
  dims = [in_dim] + [head.hidden] * (head.layers - 1) + [head.bottleneck, head.out_dim]
  return sum(2 * a * b for a, b in zip(dims, dims[1:]))


class DINOHead(nn.Module):
  out_dim: int = 65536
  hidden: int = 2048
  bottleneck: int = 256
  layers: int = 3
  norm_last_layer: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name,
                                     kernel_init=nn.initializers.truncated_normal(0.02))
    for i in range(self.layers - 1):
      x = nn.gelu(dense(self.hidden, f"mlp_{i}")(x), approximate=False)  # torch's exact GELU
    x = dense(self.bottleneck, f"mlp_{self.layers - 1}")(x)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return WeightNormLinear(self.out_dim, use_scale=not self.norm_last_layer, dtype=self.dtype,
                            name=LAST_LAYER)(x)
