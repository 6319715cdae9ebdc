"""Evaluation: classification and distribution metrics, scoring and result tables."""
