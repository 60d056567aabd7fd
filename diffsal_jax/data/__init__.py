"""Data: the batch contract, audio features, release layouts, shards and the grain loader."""
