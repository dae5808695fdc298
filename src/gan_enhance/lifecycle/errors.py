"""The lifecycle's error type, kept free of MLflow imports so the CLI can catch it cheaply."""

from gan_enhance.errors import GanEnhanceError


class RegistryError(GanEnhanceError, RuntimeError):
    """A registry operation that cannot go ahead; the message names the model and what to do."""
