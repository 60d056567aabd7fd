"""Synthetic raw releases with a learnable task, and the demo configs' data."""
