"""Losses, EMA, checkpoints and the GAN trainer."""
