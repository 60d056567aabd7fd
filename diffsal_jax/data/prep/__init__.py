"""Offline conversion of raw releases into ArrayRecord shards (`python -m data_prep`)."""
