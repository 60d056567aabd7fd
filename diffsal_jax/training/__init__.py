"""Training: config, state and train step, checkpoints, validation, the training loop."""
