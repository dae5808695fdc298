"""The train stage: the trainer that the task's kind names (gan_enhance.kinds) trains the model."""

from __future__ import annotations

from pathlib import Path

from gan_enhance.config import Params
from gan_enhance.kinds import KINDS
from gan_enhance.training.base import TrainResult


def train(params: Params, base: Path = Path(".")) -> TrainResult:
    """Train the task's model (resuming from the newest matching checkpoint) and export its EMA generator."""
    trainer = KINDS[params.task.options.kind].load_trainer()
    return trainer(params, base).run()
