"""CycleGAN's image history buffer (Shrivastava et al. 2017): discriminators see a mix of current and past
fakes, which keeps them from chasing the generator's latest move."""

from __future__ import annotations

import numpy as np
import torch


class ImagePool:
    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Until the pool is full, store and return each image; then, with probability 1/2, return a stored image
        and store the new one in its place, else return the new one."""
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif rng.random() < 0.5:
                index = int(rng.integers(self.size))
                out.append(self.images[index].to(image.device))  # a resumed pool is loaded on the CPU
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"images": torch.stack(self.images) if self.images else torch.empty(0)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.images = list(state["images"].unbind(0)) if state["images"].numel() else []
