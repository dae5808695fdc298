"""Inference: one class per kind of generator input, behind one loader.

`Enhancer(net, card)` and `Enhancer.from_dir(folder)` return the class that fits the card's `inputs`
(gan_enhance.kinds names it): `ImageEnhancer` (super-resolution, denoising, translation), `InpaintingEnhancer`
(image + hole mask) or `Sampler` (unconditional generation). Each class does every forward pass of its models
(evaluation, CLI, MLflow pyfunc, BentoML service), converts uint8 batches for the pyfunc model and the service,
and declares its pyfunc signature and the serving APIs it offers. A call that does not fit the model (a mask for
a super-resolution model, `sample` on an image model) fails naming what would.
"""

from gan_enhance.inference.base import Enhancer

__all__ = ["Enhancer"]
