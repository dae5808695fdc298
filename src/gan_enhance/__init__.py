"""gan-enhance: train, evaluate, register and serve GAN image-enhancement generators."""

__version__ = "0.1.0"
