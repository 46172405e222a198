"""DINO's projection head (Caron et al. 2021, section 3.1 and Appendix):
a 3-layer MLP (hidden 2048, GELU) to a 256-wide bottleneck, L2
normalisation, then a weight-normalised linear layer without bias to K
outputs. With `norm_last_layer` the last layer's columns have norm 1
(weight normalisation without a learned scale, the authors' default for
ViT-S); without it the scale is learned."""
import flax.linen as nn
import jax.numpy as jnp

LAST_LAYER = "last_layer"  # DINO freezes last_layer* (kernel, scale) in the first epoch


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
    last = nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype, name=LAST_LAYER,
                    kernel_init=nn.initializers.truncated_normal(0.02))
    # Each output's weight vector (a kernel column) over the bottleneck is
    # normalised; its scale is learned only without norm_last_layer.
    return nn.WeightNorm(last, use_scale=not self.norm_last_layer, feature_axes=-1,
                         name=LAST_LAYER + "_scale")(x)
