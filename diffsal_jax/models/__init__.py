"""Flax NNX modules of DiffSal, one file per published component."""
