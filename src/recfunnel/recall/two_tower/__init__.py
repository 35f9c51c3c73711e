"""The two-tower recall channel: the model, its losses and samplers, the channel wrapper."""
