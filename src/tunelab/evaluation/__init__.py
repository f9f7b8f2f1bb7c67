"""Evaluation: generation metrics, `tunelab eval` (tuned vs base on held-out prompts) and `tunelab report`."""
