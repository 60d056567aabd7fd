"""diffsal_jax: DiffSal (CVPR 2024) audio-visual video saliency in JAX/Flax NNX."""

__version__ = "0.1.0"
