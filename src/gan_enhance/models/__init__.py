"""Networks built by name, and model artifacts (safetensors weights + JSON card).

Importing the package registers every architecture: each module below decorates its networks with
`registry.register`, so a new network needs only its module and its name here.
"""

from gan_enhance.models import dcgan, discriminators, generators, inpainting, registry, rrdb, translation

__all__ = ["dcgan", "discriminators", "generators", "inpainting", "registry", "rrdb", "translation"]
