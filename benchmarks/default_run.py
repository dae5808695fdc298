"""The README's default-run table, from what `dvc repro` wrote (reports/eval/metrics.json and the model card).

    .venv/bin/python -m benchmarks.default_run          # print the table
    .venv/bin/python -m benchmarks.default_run --write  # and replace it in README.md (between its markers)

Run it after `dvc repro` on the committed code, so the README's figures are the committed reports' figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from benchmarks.common import REPO

START, END = "<!-- default-run:start -->", "<!-- default-run:end -->"
COLUMNS = (("psnr", "PSNR (Y, dB)", ".2f"), ("ssim", "SSIM (Y)", ".4f"), ("fid", "FID", ".2f"), ("kid", "KID", ".4f"))


def table(metrics: dict, card: dict, params: int) -> str:
    """Markdown: the model and each baseline, one row each."""
    crops = metrics["protocol"]["fid_crops"]
    header = "| method | " + " | ".join(
        f"{title} ({crops} crops)" if key == "fid" else title for key, title, _ in COLUMNS
    )
    lines = [header + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    methods = ["model", *(m for m in metrics if m not in ("model", "gain", "protocol"))]
    for method in methods:
        values = metrics[method]
        name = (
            f"model ({card['arch']}, {params / 1e6:.1f}M params, {card['steps']} steps)"
            if method == "model"
            else method
        )
        lines.append(f"| {name} | " + " | ".join(f"{values[key]:{fmt}}" for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args(argv)
    from safetensors import safe_open

    metrics = json.loads((REPO / "reports/eval/metrics.json").read_text())
    model = REPO / "models/generator"
    card = json.loads((model / "card.json").read_text())
    with safe_open(str(model / "generator.safetensors"), "pt") as weights:
        params = sum(_numel(weights, key) for key in weights.keys())  # noqa: SIM118 (safe_open is not iterable)
    text = table(metrics, card, params)
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
