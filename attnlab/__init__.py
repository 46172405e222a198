"""attnlab: attention models in JAX/Flax, from char-RNN to CLIP."""
