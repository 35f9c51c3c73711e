"""Training: the recipe (train_funnel), the leakage-free stacking data, the training loop."""
