"""Evaluation: saliency metrics, ground truth readers and the evaluation report."""
