"""Evaluation: the protocol's full-ranking evaluator, metrics, baselines, bootstrap intervals
and the funnel report."""
