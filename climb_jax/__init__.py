"""climb_jax: curriculum learning for small masked language models, in JAX."""

__version__ = "0.1.0"
