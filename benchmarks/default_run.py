"""The README's default-run table, from what `dvc repro` wrote (reports/eval/metrics.json and the model card).

    .venv/bin/python -m benchmarks.default_run          # print the table
    .venv/bin/python -m benchmarks.default_run --write  # and replace it in README.md (between its markers)

Run it after `dvc repro` on the committed code, so the README's figures are the committed reports' figures.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import Any

from benchmarks.common import REPO, gain_cell
from gan_enhance.metric_facts import INTERVAL_SUFFIXES, Metric, present
from gan_enhance.models.artifact import PIXEL_TWIN, twin_dirs

START, END = "<!-- default-run:start -->", "<!-- default-run:end -->"


def table(metrics: dict, card: dict, params: int, twin_steps: dict[str, int]) -> str:
    """Markdown: the model and each baseline (its twins: `twin_steps` names them with their steps), one row each,
    every value with its interval, then the model's paired gain over each baseline; the headers name each metric's
    sample count."""
    model, protocol = metrics["model"], metrics["protocol"]
    shown = present(model)
    header = f"| method (± {protocol['confidence']:.0%} interval) | " + " | ".join(
        _title(m, model, protocol) for m in shown
    )
    lines = [header + " |", "|---" * (len(shown) + 1) + "|"]
    methods = ["model", *(m for m in metrics if m not in ("model", "gain", "protocol"))]
    for method in methods:
        name = (
            f"model ({card['arch']}, {params / 1e6:.1f}M params, {card['steps']} steps)"
            if method == "model"
            else f"{method} (the model after its {twin_steps[method]}-step pixel-loss phase)"
            if method == PIXEL_TWIN and method in twin_steps
            else method
        )
        lines.append(f"| {name} | " + " | ".join(_plus_minus(m, metrics[method]) for m in shown) + " |")
    gain = metrics["gain"]
    for baseline in methods[1:]:
        cells = [gain_cell(m, gain, baseline) for m in shown]
        lines.append(f"| *gain over {baseline} (paired; positive = better)* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _title(m: Metric, model: dict[str, Any], protocol: dict[str, Any]) -> str:
    """'PSNR (Y, dB, 4 images)', 'FID (64 crops)'."""
    n = model[m.name + INTERVAL_SUFFIXES[-1]]
    details = [protocol["metric_space"].upper(), m.unit.strip(), f"{n} images"] if m.per == "image" else [f"{n} crops"]
    return f"{m.label} ({', '.join(d for d in details if d)})"


def _plus_minus(m: Metric, values: dict[str, Any]) -> str:
    """'31.61 ± 0.59', or '182.48 +12.10/-10.95' where the interval is not symmetric about the value (FID and KID's
    bootstrap intervals); an unbounded end (a single sample) shows as inf."""
    value = values[m.name]
    low, high, _ = (values.get(m.name + suffix) for suffix in INTERVAL_SUFFIXES)
    above = m.show(math.inf if high is None else high - value)
    below = m.show(math.inf if low is None else value - low)
    return f"{m.show(value)} ± {above}" if above == below else f"{m.show(value)} +{above}/-{below}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args(argv)
    from safetensors import safe_open

    metrics = json.loads((REPO / "reports/eval/metrics.json").read_text())
    if "confidence" not in metrics["protocol"]:
        print("reports/eval/metrics.json has no intervals (an older evaluation); run `dvc repro`", file=sys.stderr)
        return 1
    model = REPO / "models/generator"
    card = json.loads((model / "card.json").read_text())
    with safe_open(str(model / "generator.safetensors"), "pt") as weights:
        params = sum(_numel(weights, key) for key in weights.keys())  # noqa: SIM118 (safe_open is not iterable)
    twin_steps = {
        name: json.loads((folder / "card.json").read_text())["steps"] for name, folder in twin_dirs(model).items()
    }
    text = table(metrics, card, params, twin_steps)
    print(text)
    if args.write:
        readme = REPO / "README.md"
        body = readme.read_text()
        if START not in body or END not in body:
            print(f"README.md has no {START} ... {END} block", file=sys.stderr)
            return 1
        readme.write_text(re.sub(f"{re.escape(START)}.*?{re.escape(END)}", f"{START}\n{text}\n{END}", body, flags=re.S))
        print("README.md updated")
    return 0


def _numel(weights: object, key: str) -> int:
    """Elements of tensor `key` in an open safetensors file, read from its header."""
    count = 1
    for side in weights.get_slice(key).get_shape():
        count *= side
    return count


if __name__ == "__main__":
    sys.exit(main())
