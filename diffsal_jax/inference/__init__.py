"""Inference on user videos: reading media, predicting every frame, writing maps and overlays."""
