"""The train stage: the trainer that the task's kind names (gan_enhance.kinds) trains the model.

With train.distributed asking for more than one process, the stage launches itself through torchrun's elastic
launcher (gan_enhance.training.launch); each worker then runs `python -m gan_enhance.training.stage` as one rank.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from gan_enhance.config import Params, load_params
from gan_enhance.kinds import KINDS
from gan_enhance.training.base import TrainResult
from gan_enhance.training.distributed import launched_world, under_launcher


def train(params: Params, base: Path = Path(".")) -> TrainResult:
    """Train the task's model (resuming from the newest matching checkpoint) and export its EMA generator."""
    from gan_enhance.training.launch import launch, world_size

    if not under_launcher() and world_size(params) > 1:
        return launch(params, base)
    trainer = KINDS[params.task.options.kind].load_trainer()
    return trainer(params, base).run()


@record
def main(argv: list[str] | None = None) -> None:
    """One rank of a launched training (the launcher passes the params it validated and the project folder)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True, help="params file (YAML or JSON) of the training")
    parser.add_argument("--base", type=Path, default=Path("."), help="project folder the params' paths start from")
    parser.add_argument("--result", type=Path, help="where rank 0 writes the result (JSON)")
    args = parser.parse_args(argv)
    result = train(load_params(args.params), args.base)
    if args.result and launched_world().main:
        saved = {**asdict(result), "model_dir": str(result.model_dir)}
        args.result.write_text(json.dumps(saved))


if __name__ == "__main__":
    main()
