"""Evaluation: saliency metrics, ground truth readers, the evaluation tables and HTML report."""
