"""The `gan-enhance` command line: each pipeline stage, plus enhancing your own images."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from gan_enhance.config import load_params, parse_overrides
from gan_enhance.device import disable_telemetry
from gan_enhance.errors import GanEnhanceError
from gan_enhance.metric_facts import present, samples_note

app = typer.Typer(
    help="Train, evaluate and apply GAN image-enhancement generators. Stages read params.yaml; "
    "`dvc repro` runs them in order, cached.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameters file.")]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A model folder (card.json + safetensors), or a registered version: models:/NAME@champion, "
        "models:/NAME@challenger, models:/NAME/VERSION (registry at --tracking-uri, $MLFLOW_TRACKING_URI or "
        "./mlflow.db).",
    ),
]
TrackingOpt = Annotated[
    str | None, typer.Option(help="MLflow tracking URI of the registry (default: $MLFLOW_TRACKING_URI, ./mlflow.db).")
]
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


def _load_model(model: str, tracking_uri: str | None, device: str, **options: Any):
    """The Enhancer for a model folder or a models:/ URI; `options` are Enhancer.from_dir's."""
    if model.startswith("models:/"):
        from gan_enhance.lifecycle.registry import load_enhancer, parse_model_uri

        try:
            name, alias, version = parse_model_uri(model)
        except ValueError as exc:
            _fail(str(exc))
        return load_enhancer(name, alias or "champion", tracking_uri, device=device, version=version, **options)
    from gan_enhance.inference import Enhancer

    return Enhancer.from_dir(model, device=device, **options)


@app.command()
def params(params_file: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Validate the parameters and print them, defaults filled in."""
    resolved = _params(params_file, set_)
    typer.echo(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))


@app.command()
def prepare(params_file: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Validate the source images, convert them to RGB PNGs and split them (train/val/test) by content hash."""
    from gan_enhance.data.prepare import DOMAIN_B_DIR, REPORT_FILE, prepare_stage

    p = _params(params_file, set_)
    prepare_stage(p)
    for folder in (p.data.prepared_dir, p.data.prepared_dir / DOMAIN_B_DIR):
        if (folder / REPORT_FILE).is_file():
            report = json.loads((folder / REPORT_FILE).read_text())
            typer.echo(
                f"prepared {report['accepted']} images of {report['source']} into {folder}: {report['per_split']}; "
                f"rejected {report['rejected']} (reasons in {folder / REPORT_FILE})"
            )


@app.command()
def train(params_file: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Train the GAN (resumes from the newest matching checkpoint) and export the EMA generator.

    With train.distributed asking for more than one process (e.g. -S train.distributed.nproc_per_node=2), it
    launches itself through torchrun's elastic launcher; started by torchrun itself
    (`torchrun --nnodes N --nproc_per_node G ... -m gan_enhance train`), it runs as one of the ranks.
    """
    from gan_enhance.training.distributed import launched_world
    from gan_enhance.training.stage import train as run_train

    result = run_train(_params(params_file, set_))
    if not launched_world().main:
        return
    typer.echo(
        f"model written to {result.model_dir} (steps {result.steps}, resumed from {result.resumed_from}, "
        f"MLflow run {result.run_id})"
    )


@app.command("import")
def import_(
    weights: Annotated[Path, typer.Argument(help="A BasicSR/Real-ESRGAN .pth (params_ema, params or a state dict).")],
    arch: Annotated[str, typer.Option(help="The file's architecture: rrdb (ESRGAN's RRDBNet) or srvgg.")],
    scale: Annotated[int, typer.Option(help="Its upscaling factor: 4, 2 or 1 for rrdb; 1-4 for srvgg.")],
    license_: Annotated[
        str, typer.Option("--license", help="The weights' license as you know it (recorded in the card).")
    ] = "unknown",
    name: Annotated[str | None, typer.Option(help="A name for the model card (default: the file's stem).")] = None,
    task: Annotated[str | None, typer.Option(help="sr or denoise (default: sr for x2-x4, denoise for x1).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Model folder to write (default: models/imported/NAME).")
    ] = None,
) -> None:
    """Import a published generator (ESRGAN, RealESRGAN_x4plus, realesr-general-x4v3, ...) as a model folder.

    The file is read without unpickling code; keys are mapped, every shape checked, and nothing is written unless
    the whole file fits. Then evaluate and register it as a trained model, e.g.
    `gan-enhance evaluate -S train.out_dir=models/imported/NAME`.
    """
    from gan_enhance.models.importer import import_weights

    folder = out or Path("models/imported") / (name or weights.stem)
    card = import_weights(weights, arch, scale, folder, license_, name=name, task=task)  # type: ignore[arg-type]
    typer.echo(
        f"imported {weights} as {card.arch} {card.arch_kwargs} for {card.task} x{card.scale} into {folder} "
        f"(sha256 {card.imported['sha256'][:12]}, license {license_}); evaluate it with "
        f"`gan-enhance evaluate -S train.out_dir={folder}`"
    )


@app.command()
def evaluate(params_file: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Evaluate the trained generator and the classical baselines on the test split."""
    from gan_enhance.evaluation.stage import evaluate as run_evaluate

    p = _params(params_file, set_)
    result = run_evaluate(p)
    methods = [k for k in result if k not in ("gain", "protocol")]
    shown = present(result[methods[0]])  # translate/generate have no PSNR/SSIM
    table = [["method", *(m.label for m in shown)]]
    table += [[method, *(m.show_interval(result[method]) for m in shown)] for method in methods]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        typer.echo("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    typer.echo(samples_note(result[methods[0]], shown, result["protocol"]["confidence"]))
    typer.echo(f"written to {p.evaluate.out_dir}")


@app.command()
def register(params_file: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Register the evaluated generator in the MLflow registry (alias challenger); an unchanged model is reused."""
    from gan_enhance.lifecycle.register import register as run_register

    p = _params(params_file, set_)
    result = run_register(p)
    if result.status == "skipped":
        typer.echo(f"nothing registered: {result.reason}")
    elif result.status == "unchanged":
        typer.echo(f"unchanged: {result.model_name} version {result.version} already holds this model")
    else:
        typer.echo(f"registered {result.model_name} version {result.version} (alias challenger)")
    typer.echo(f"record: {p.registry.record}")


@app.command()
def promote(
    params_file: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    version: Annotated[str | None, typer.Option(help="Judge this version instead of the challenger.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even where the policy refuses.")] = False,
) -> None:
    """Make the challenger champion if it beats the champion by the `promote` policy (exit 1 when refused)."""
    from gan_enhance.lifecycle.promotion import promote as run_promote

    outcome = run_promote(_params(params_file, set_), version=version, force=force)
    typer.echo(f"{outcome.verdict}: {outcome.model_name} version {outcome.version}: {outcome.reason}")
    typer.echo(f"champion: {f'version {outcome.champion}' if outcome.champion else 'none yet'}")
    if outcome.verdict == "refused":
        raise typer.Exit(code=1)


@app.command()
def rollback(params_file: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Give the alias champion back to the version that held it before."""
    from gan_enhance.lifecycle.promotion import rollback as run_rollback

    outcome = run_rollback(_params(params_file, set_))
    typer.echo(f"rolled back: {outcome.reason} ({outcome.model_name})")


@app.command()
def models(
    params_file: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    name: Annotated[str | None, typer.Option(help="Only this registered model.")] = None,
    last: Annotated[int, typer.Option(min=1, help="Versions shown per model (those holding an alias always).")] = 5,
) -> None:
    """List registered models and their versions: aliases, key metrics and the last promotion decision."""
    from gan_enhance.lifecycle.registry import client_for, list_versions

    params = _params(params_file, set_)
    client = client_for(params.tracking.uri)
    rows = list_versions(client, name, last)
    if not rows:
        typer.echo(f"no registered models at {client.tracking_uri}; `dvc repro` (or `gan-enhance register`) adds one")
        return
    shown = present(dict.fromkeys(key for row in rows for key in row.metrics))
    columns = {m.name: max(9, len(m.label) + 2) for m in shown}
    width = max(len("MODEL"), *(len(r.model) for r in rows))
    header = f"{'MODEL':<{width}}  {'VERSION':>7}  {'ALIASES':<20}" + "".join(
        f"{m.label:>{columns[m.name]}}" for m in shown
    )
    typer.echo(f"{header}  {'DECISION':<9}  CREATED (UTC)")
    for row in rows:
        numbers = "".join(
            f"{m.show(row.metrics[m.name]) if m.name in row.metrics else '-':>{columns[m.name]}}" for m in shown
        )
        aliases = ", ".join(row.aliases) or "-"
        typer.echo(
            f"{row.model:<{width}}  {row.version:>7}  {aliases:<20}{numbers}  {row.decision or '-':<9}  {row.created}"
        )


@app.command()
def ui(
    params_file: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Serve the MLflow UI (runs, registered models, aliases) over the project's SQLite store, on 127.0.0.1."""
    import os

    from gan_enhance.lifecycle.server import HOST, port_in_use, server_command
    from gan_enhance.tracking import tracking_uri

    uri = tracking_uri(_params(params_file, set_).tracking)
    if not uri.startswith("sqlite:///"):
        _fail(f"the tracking URI {uri} is not a SQLite store; open that server's own UI instead")
    if port_in_use(port):
        _fail(
            f"port {port} on {HOST} is already in use (another `make ui`?); open http://{HOST}:{port} if that is "
            "the MLflow UI, or pick another port: `gan-enhance ui --port 5001` / `make ui UI_PORT=5001`"
        )
    database = Path(uri.removeprefix("sqlite:///"))
    command, env = server_command(database, database.parent / "mlartifacts", port)
    typer.echo(f"MLflow UI for {database} on http://{HOST}:{port} (Ctrl+C stops it)")
    os.execve(command[0], command, env)


@app.command()
def enhance(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("enhanced"),
    model: ModelOpt = "models/generator",
    tracking_uri: TrackingOpt = None,
    tile: Annotated[
        int | None,
        typer.Option(
            help="Tile side in input pixels (0: whole image at once). Default: 256 on the CPU; on a GPU the whole "
            "image when it fits in half the free memory, else the largest tile that does."
        ),
    ] = None,
    tile_pad: Annotated[int, typer.Option(help="Context around each tile, in input pixels.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            help="Compute dtype: auto (bf16 on a GPU that has it, else fp16; fp32 on the CPU), fp32, bf16, fp16."
        ),
    ] = "auto",
    compile_net: Annotated[
        bool, typer.Option("--compile", help="torch.compile the network (GPU; falls back to eager when it fails).")
    ] = False,
    max_pixels: Annotated[int, typer.Option(help="Refuse inputs with more pixels.")] = 50_000_000,
    masks: Annotated[
        Path | None,
        typer.Option(
            help="Inpainting models: a folder of masks named like the inputs (any image format), white = fill in."
        ),
    ] = None,
) -> None:
    """Enhance images with a trained model; outputs are PNGs named after the inputs. Inpainting models fill in
    the white pixels of each input's mask (--masks); generation models use `gan-enhance sample`."""
    from tqdm import tqdm

    from gan_enhance.data.image_io import SUPPORTED_SUFFIXES, ImageError, open_image

    disable_telemetry()
    found: list[tuple[Path, Path]] = []  # (input, where its output goes, relative to --output)
    for item in inputs:
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES)
            found += [(p, p.relative_to(item)) for p in images]
        elif item.is_file():
            found.append((item, Path(item.name)))
        else:
            _fail(f"'{item}' does not exist; pass image files or folders")
    targets = output_paths(found)
    files = list(targets)
    for note in renamed_outputs(found, targets):
        typer.echo(note)
    if not files:
        _fail("no images found in the given inputs (PNG, JPEG, WebP, TIFF, BMP)")
    try:  # a bad --precision (or fp16 on the CPU) is a ValueError naming the choices
        enhancer = _load_model(
            model, tracking_uri, device, tile=tile, tile_pad=tile_pad, precision=precision, compile_net=compile_net
        )
    except ValueError as exc:
        _fail(str(exc))
    if not enhancer.takes_images:
        _fail(f"{model} is a generation model: it makes images from noise; use `gan-enhance sample -m {model}`")
    if enhancer.takes_mask and masks is None:
        _fail(f"{model} is an inpainting model: pass --masks DIR, masks named like the inputs, white = fill in")
    if masks is not None and not enhancer.takes_mask:
        _fail(f"{model} is a '{enhancer.card.task}' model and takes no masks; leave out --masks")
    if masks is not None and not masks.is_dir():
        _fail(f"--masks '{masks}' is not a folder; give the folder that holds the masks")
    mask_files = {} if masks is None else {p.stem: p for p in masks.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES}
    output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in tqdm(files, desc="enhance", unit="img", disable=None):
        try:
            image = open_image(path, max_pixels)
            mask = None
            if enhancer.takes_mask:
                if path.stem not in mask_files:
                    raise ImageError(f"{path.name}: no mask named {path.stem}.* in {masks}")
                mask = open_image(mask_files[path.stem], max_pixels)
            result = enhancer.enhance_image(image, mask=mask)
        except (ImageError, ValueError) as exc:
            failed += 1
            typer.secho(f"skipped: {exc}", fg=typer.colors.YELLOW, err=True)
            continue
        target = output / targets[path]
        target.parent.mkdir(parents=True, exist_ok=True)
        result.save(target)
    typer.echo(f"enhanced {len(files) - failed} of {len(files)} images into {output}")
    if failed:
        raise typer.Exit(code=1)


def output_paths(found: list[tuple[Path, Path]]) -> dict[Path, Path]:
    """Input -> output path (relative to the output folder): the input's place under the folder it was found in,
    as PNG. Inputs that would share an output (x.png and x.jpg) keep their format in the name (x_png.png, x_jpg.png);
    a number is added where that is not enough, so no output overwrites another."""
    wanted = {path: relative.with_suffix(".png") for path, relative in found}
    counts: dict[Path, int] = {}
    for out in wanted.values():
        counts[out] = counts.get(out, 0) + 1
    result: dict[Path, Path] = {}
    taken: set[Path] = set()
    for path, out in wanted.items():
        if counts[out] > 1:
            out = out.with_name(f"{out.stem}_{path.suffix.lstrip('.').lower()}.png")
        candidate, n = out, 2
        while candidate in taken:
            candidate, n = out.with_name(f"{out.stem}_{n}.png"), n + 1
        taken.add(candidate)
        result[path] = candidate
    return result


def renamed_outputs(found: list[tuple[Path, Path]], targets: dict[Path, Path]) -> list[str]:
    """A line for each input whose output is not simply its name as PNG."""
    return [
        f"{path} -> {targets[path]} (another input would also be {relative.with_suffix('.png')})"
        for path, relative in found
        if targets[path] != relative.with_suffix(".png")
    ]


@app.command()
def sample(
    n: Annotated[int, typer.Option("-n", min=1, help="How many samples.")] = 16,
    seed: Annotated[int, typer.Option(min=0, help="Sample i depends only on (seed, i).")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("samples"),
    model: ModelOpt = "models/generator",
    tracking_uri: TrackingOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Generation models: n seeded samples as PNGs (sample_000.png, ...) and grid.png."""

    from PIL import Image

    from gan_enhance.visual import image_grid

    disable_telemetry()
    enhancer = _load_model(model, tracking_uri, device)
    if enhancer.takes_images:
        _fail(f"{model} is a '{enhancer.card.task}' model, not a generation model; use `gan-enhance enhance`")
    images = enhancer.sample(n, seed=seed)
    output.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(output / f"sample_{i:03d}.png")
    side = math.ceil(math.sqrt(n))
    image_grid([list(images[i : i + side]) for i in range(0, n, side)], min_cell=64).save(output / "grid.png")
    typer.echo(f"{n} samples (seed {seed}) and grid.png in {output}")


def main() -> None:
    """Entry point that turns known errors into one clear line and exit code 2."""
    try:
        app()
    except GanEnhanceError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
