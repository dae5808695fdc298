"""The `gan-enhance` command line: each pipeline stage, plus enhancing your own images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from gan_enhance.config import ParamsError, load_params, parse_overrides
from gan_enhance.device import disable_telemetry

app = typer.Typer(
    help="Train, evaluate and apply GAN image-enhancement generators. Stages read params.yaml; "
    "`dvc repro` runs them in order, cached.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameters file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="Override a parameter, KEY=VALUE (repeatable), e.g. -S train.steps=200."),
]


def _params(path: Path, overrides: list[str] | None):
    disable_telemetry()
    return load_params(path, parse_overrides(overrides or []))


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def params(params_file: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Validate the parameters and print them, defaults filled in."""
    resolved = _params(params_file, set_)
    typer.echo(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))


@app.command()
def prepare(params_file: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Validate the source images, convert them to RGB PNGs and split them (train/val/test) by content hash."""
    from gan_enhance.data.prepare import REPORT_FILE
    from gan_enhance.data.prepare import prepare as run_prepare

    p = _params(params_file, set_)
    rows = run_prepare(p.data, min_side=p.train.patch_size)
    report = json.loads((p.data.prepared_dir / REPORT_FILE).read_text())
    typer.echo(
        f"prepared {len(rows)} images into {p.data.prepared_dir}: {report['per_split']}; "
        f"rejected {report['rejected']} (reasons in {p.data.prepared_dir / REPORT_FILE})"
    )


@app.command()
def train(params_file: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Train the GAN (resumes from the newest matching checkpoint) and export the EMA generator."""
    from gan_enhance.training.trainer import train as run_train

    result = run_train(_params(params_file, set_))
    typer.echo(
        f"model written to {result.model_dir} (steps {result.steps}, resumed from {result.resumed_from}, "
        f"MLflow run {result.run_id})"
    )


@app.command()
def evaluate(params_file: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Evaluate the trained generator and the classical baselines on the test split."""
    from gan_enhance.evaluation.stage import evaluate as run_evaluate

    p = _params(params_file, set_)
    result = run_evaluate(p)
    methods = [k for k in result if k not in ("gain", "protocol")]
    typer.echo(f"{'method':<14}{'PSNR':>8}{'SSIM':>8}{'FID':>9}{'KID':>9}")
    for m in methods:
        r = result[m]
        typer.echo(f"{m:<14}{r['psnr']:>8.2f}{r['ssim']:>8.4f}{r['fid']:>9.2f}{r['kid']:>9.4f}")
    typer.echo(f"written to {p.evaluate.out_dir}")


@app.command()
def enhance(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("enhanced"),
    model: Annotated[Path, typer.Option("--model", "-m", help="Model folder (card.json + safetensors).")] = Path(
        "models/generator"
    ),
    tile: Annotated[int, typer.Option(help="Tile side in input pixels (0: whole image at once).")] = 256,
    tile_pad: Annotated[int, typer.Option(help="Context around each tile, in input pixels.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    max_pixels: Annotated[int, typer.Option(help="Refuse inputs with more pixels.")] = 50_000_000,
) -> None:
    """Enhance images with a trained model; outputs are PNGs named after the inputs."""
    from tqdm import tqdm

    from gan_enhance.data.image_io import SUPPORTED_SUFFIXES, ImageError, open_image
    from gan_enhance.inference import Enhancer

    disable_telemetry()
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            _fail(f"'{item}' does not exist; pass image files or folders")
    if not files:
        _fail("no images found in the given inputs (PNG, JPEG, WebP, TIFF, BMP)")
    enhancer = Enhancer.from_dir(model, device=device, tile=tile, tile_pad=tile_pad)
    output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in tqdm(files, desc="enhance", unit="img", disable=None):
        try:
            image = open_image(path, max_pixels)
        except ImageError as exc:
            failed += 1
            typer.secho(f"skipped: {exc}", fg=typer.colors.YELLOW, err=True)
            continue
        enhancer.enhance_image(image).save(output / f"{path.stem}.png")
    typer.echo(f"enhanced {len(files) - failed} of {len(files)} images into {output}")
    if failed:
        raise typer.Exit(code=1)


def main() -> None:
    """Entry point that turns known errors into one clear line and exit code 2."""
    from gan_enhance.data.prepare import PrepareError
    from gan_enhance.data.sources import SourceError
    from gan_enhance.evaluation.stage import EvaluationError
    from gan_enhance.models.artifact import ArtifactError

    try:
        app()
    except (ParamsError, PrepareError, SourceError, EvaluationError, ArtifactError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
