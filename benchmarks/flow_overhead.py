"""Flow overhead: the `retrain` flow against the same steps run directly on the project's DVC pipeline.

Two fresh copies of the project (dvc.yaml, src/, the same params, git + DVC initialised, MLflow in SQLite inside
each) do the same work:

- direct: `dvc repro` (prepare, train, evaluate, register) then `gan-enhance promote`;
- flow:   `python -m flows.retrain --no-bento` (lock, apply params, detect changes, pipeline, read metrics,
          register, promote, report) against a Prefect server started beforehand on 127.0.0.1 (as under
          `make flows-serve`; its start-up is not counted).

Case 1 "changed" starts from nothing (the whole pipeline runs); case 2 "nothing changed" repeats it on the same
copies (direct: `dvc repro` finds everything up to date, promote finds the champion unchanged; flow: skipped).
Each is timed as wall-clock seconds of the command and as CPU seconds of it and its children (less disturbed by
the other processes on this shared machine). Overhead = flow - direct; ratio = flow / direct; the target is an
overhead of at most 10 % or 10 s. Finally, the cost of a command-line run with no server (Prefect starts a
temporary one) is the "nothing changed" flow again without PREFECT_API_URL.

The params are small so that it runs in a few minutes: `--preset tiny` (default; the test suite's model,
12 photo crops, 12 steps) or `--preset short` (params.yaml's model and embedded photos, 20 steps, 8 FID crops).
The flow's overhead is a fixed cost per run (process start, Prefect API calls, `dvc status`, the registry reads),
so on a real training run of hours the ratio tends to 1.

    .venv/bin/python -m benchmarks.flow_overhead [--preset tiny|short] [--repeats 2]   # ~10 min here
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from benchmarks.common import REPO, RESULTS, WORK, machine, machine_line
from gan_enhance.config import load_params
from gan_enhance.device import TELEMETRY_OFF
from gan_enhance.servers import free_port, stop, wait_healthy

BIN = Path(sys.executable).parent
OUT = WORK / "flow_overhead"
DOCS = REPO / "docs" / "benchmarks.md"
TARGET_RATIO, TARGET_SECONDS = 1.10, 10.0
PRESETS = {"tiny": "the tests' tiny params", "short": "params.yaml's model, 20 training steps, 8 FID crops"}


def photo_crops(folder: Path, count: int = 12, size: int = 96) -> Path:
    """Deterministic crops of photos shipped by scikit-image (as the tests' tiny source)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    for i in range(count):
        image = sources[i % len(sources)]
        top, left = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
        Image.fromarray(np.ascontiguousarray(image[top : top + size, left : left + size])).save(folder / f"{i:02d}.png")
    return folder


def preset_overrides(preset: str, work: Path) -> dict[str, Any]:
    if preset == "short":
        return {
            "train.steps": 20,
            "train.warmup_steps": 10,
            "train.log_every": 5,
            "train.sample_every": 10,
            "train.checkpoint_every": 10,
            "evaluate.fid_crops": 8,
        }
    return {  # the tests' tiny params
        "data.source": str(photo_crops(work / "source")),
        "data.split": {"val": 0.15, "test": 0.25, "salt": ""},
        "data.min_side": 32,
        "task.sr.scale": 2,
        "model.generator": {"name": "srvgg", "num_feat": 8, "num_conv": 2},
        "model.discriminator": {"name": "patchgan", "num_feat": 8, "num_layers": 2},
        "train.steps": 12,
        "train.warmup_steps": 6,
        "train.batch_size": 4,
        "train.patch_size": 32,
        "train.log_every": 2,
        "train.sample_every": 6,
        "train.checkpoint_every": 4,
        "train.ema_halflife_images": 20,
        "evaluate.tile": 32,
        "evaluate.tile_overlap": 8,
        "evaluate.fid_crops": 4,
        "evaluate.fid_crop_size": 32,
        "evaluate.grid_images": 2,
    }


def make_project(root: Path, overrides: dict[str, Any]) -> Path:
    """A fresh copy of the project: dvc.yaml, src/, params.yaml (every key, MLflow in SQLite here), git + DVC."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = load_params(REPO / "params.yaml", {**overrides, "tracking.uri": f"sqlite:///{root / 'mlflow.db'}"})
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    for command in (
        ["git", "init", "-q"],
        [str(BIN / "dvc"), "init", "-q"],
        [str(BIN / "dvc"), "config", "core.analytics", "false"],
    ):
        subprocess.run(command, cwd=root, check=True, capture_output=True)
    return root


def env(api: str | None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    base.update(TELEMETRY_OFF, PREFECT_HOME=str(OUT / "prefect-home"))
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
    if api:
        base["PREFECT_API_URL"] = api
    return base


def timed(commands: list[list[str]], cwd: Path, environment: dict[str, str], log: Path) -> dict[str, float]:
    """Wall-clock and CPU seconds (the commands and all their children) of running `commands` in order."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("a") as handle:
        for command in commands:
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            code = subprocess.run(command, cwd=cwd, env=environment, stdout=handle, stderr=subprocess.STDOUT).returncode
            if code not in (0, 1):  # promote exits 1 when it refuses
                raise SystemExit(f"{' '.join(command)} failed with {code}; see {log}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def direct(root: Path, environment: dict[str, str], log: Path) -> dict[str, float]:
    return timed([[str(BIN / "dvc"), "repro"], [str(BIN / "gan-enhance"), "promote"]], root, environment, log)


def flow(root: Path, environment: dict[str, str], log: Path, summary: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "flows.retrain", "--repo", str(root), "--no-bento", "--summary", str(summary)]
    result: dict[str, Any] = timed([command], REPO, environment, log)
    outcome = json.loads(summary.read_text())
    result["status"] = outcome["status"]
    result["steps"] = outcome.get("timings", {})
    return result


def start_server() -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = OUT / "prefect-server.log"
    started = time.perf_counter()
    with log.open("w") as output:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env(None),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_healthy(proc, f"{api}/health", 300, log)
    return proc, api, time.perf_counter() - started


def verdict(direct_s: float, flow_s: float) -> str:
    overhead = flow_s - direct_s
    return "ok" if overhead <= max(TARGET_SECONDS, (TARGET_RATIO - 1) * direct_s) else "over target"


WORK_STEPS = ("refresh data", "pipeline", "register", "promote")  # the flow's steps that do the pipeline's work


def row(case: str, d: dict[str, float], f: dict[str, Any]) -> dict[str, Any]:
    own = f["wall_s"] - sum(seconds for name, seconds in f["steps"].items() if name in WORK_STEPS)
    return {
        "case": case,
        "direct_s": d["wall_s"],
        "flow_s": f["wall_s"],
        "overhead_s": round(f["wall_s"] - d["wall_s"], 2),
        "ratio": round(f["wall_s"] / d["wall_s"], 3),
        "direct_cpu_s": d["cpu_s"],
        "flow_cpu_s": f["cpu_s"],
        "overhead_cpu_s": round(f["cpu_s"] - d["cpu_s"], 2),
        "flow_own_s": round(own, 2),
        "flow_status": f["status"],
        "flow_steps": f["steps"],
        "verdict": verdict(d["wall_s"], f["wall_s"]),
    }


def median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(rows[0])
    for key in (
        "direct_s",
        "flow_s",
        "overhead_s",
        "ratio",
        "direct_cpu_s",
        "flow_cpu_s",
        "overhead_cpu_s",
        "flow_own_s",
    ):
        merged[key] = round(statistics.median(r[key] for r in rows), 3)
    merged["verdict"] = verdict(merged["direct_s"], merged["flow_s"])
    return merged


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| case | direct (s) | flow (s) | overhead (s) | ratio | CPU direct (s) | CPU flow (s) | CPU overhead (s) | "
        "flow's own time (s) | flow outcome | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['case']} | {r['direct_s']:.1f} | {r['flow_s']:.1f} | {r['overhead_s']:+.1f} | {r['ratio']:.3f} | "
            f"{r['direct_cpu_s']:.1f} | {r['flow_cpu_s']:.1f} | {r['overhead_cpu_s']:+.1f} | {r['flow_own_s']:.1f} | "
            f"{r['flow_status']} | {r['verdict']} |"
        )
    walls = "; ".join(
        f"{case}: " + ", ".join(f"{r['direct_s']:.0f}/{r['flow_s']:.0f}" for r in rows)
        for case, rows in report["rounds"].items()
    )
    changed = report["rows"][0]["flow_steps"]
    own, direct = report["rows"][0]["flow_own_s"], report["rows"][0]["direct_s"]
    target = max(TARGET_SECONDS, (TARGET_RATIO - 1) * direct)
    verdict_line = (
        f"within the target (at most {target:.0f} s here)" if own <= target else f"over the target ({target:.0f} s)"
    )
    steps = ", ".join(f"{name} {seconds:.1f}" for name, seconds in changed.items())
    served, alone = report["rows"][1]["flow_s"], report["no_server_s"]
    lines += [
        "",
        f"Medians of {report['repeats']} round(s) (direct/flow seconds per round: {walls}). Overhead = flow - direct, "
        "ratio = flow / direct (wall-clock); CPU: user + system seconds of the command and its children. "
        "Flow's own time: the flow's wall-clock minus its steps that do the pipeline's work "
        f"({', '.join(WORK_STEPS)}), measured in the same run, so other load on the machine moves it less.",
        "",
        f"Flow steps in the changed case (s): {steps}.",
        "",
        f"Reading: the flow's own time, {own:.1f} s per run ({100 * own / direct:.0f} % of the direct run here), is "
        "its fixed cost (process start and imports, Prefect's engine and API calls, the lock, `dvc status` and the "
        "source check, reading the metrics, the report), partly offset by running promote inside its own process "
        "where the direct path starts `gan-enhance promote`. The wall-clock differences between rounds come from "
        f"other load on this shared machine and are larger than the overhead itself. Verdict: {verdict_line}.",
        "",
        f"No server (Prefect starts a temporary one): the nothing-changed flow took {alone:.1f} s against "
        f"{served:.1f} s with the server running ({alone - served:+.1f} s); the server itself took "
        f"{report['server_start_s']:.1f} s to start (not counted above).",
    ]
    return "\n".join(lines)


def write_docs_section(section: str) -> None:
    """Append the `## Flows` section to docs/benchmarks.md, whose other sections other benchmarks write; a
    `## Flows` section from an earlier run of this one is replaced where it stands, the rest left as it is."""
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    text = DOCS.read_text() if DOCS.is_file() else "# Benchmarks\n"
    start = text.find("\n## Flows\n")
    if start < 0:
        with DOCS.open("a") as handle:
            handle.write(section)
        return
    end = text.find("\n## ", start + 1)
    updated = text[:start] + section.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")
    tmp = DOCS.with_suffix(".md.tmp")
    tmp.write_text(updated)
    tmp.replace(DOCS)


def publish(report: dict[str, Any], docs: bool = True) -> None:
    """Print the table; write benchmarks/results/flow_overhead.{json,md} and the docs section."""
    info, preset, repeats = report["machine"], report["preset"], report["repeats"]
    table = markdown(report)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "flow_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    header = (
        f"# Flow overhead: `retrain` against `dvc repro` + `gan-enhance promote`\n\n{machine_line(info)}.\n"
        f"Preset `{preset}` ({PRESETS[preset]}), {repeats} round(s), medians; target {report['target']}.\n\n"
    )
    (RESULTS / "flow_overhead.md").write_text(header + table + "\n")
    if docs:
        section = (
            "\n## Flows\n\n"
            "`.venv/bin/python -m benchmarks.flow_overhead` (benchmarks/flow_overhead.py): the `retrain` Prefect flow "
            "against the same steps run directly (`dvc repro`, then `gan-enhance promote`) on the project's pipeline, "
            f"each on a fresh copy of the project; preset `{preset}` ({PRESETS[preset]}: small, so that it runs in "
            "minutes; the flow's overhead is a fixed cost per run), a Prefect server running as under "
            f"`make flows-serve`. {machine_line(info)}.\n\n{table}\n"
        )
        write_docs_section(section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "short"), default="tiny")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of both cases (medians are reported)")
    parser.add_argument("--no-docs", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("--report-only", action="store_true", help="re-render the last results (no measuring)")
    args = parser.parse_args(argv)
    if args.report_only:
        publish(json.loads((RESULTS / "flow_overhead.json").read_text()), docs=not args.no_docs)
        return 0

    OUT.mkdir(parents=True, exist_ok=True)
    info = machine()
    log = OUT / "commands.log"
    log.write_text("")
    overrides = preset_overrides(args.preset, OUT)
    server, api, server_start = start_server()
    rounds: dict[str, list[dict[str, Any]]] = {"changed": [], "nothing changed": []}
    try:
        for index in range(args.repeats):
            a = make_project(OUT / f"direct-{index}", overrides)
            b = make_project(OUT / f"flow-{index}", overrides)
            order = ("direct", "flow") if index % 2 == 0 else ("flow", "direct")
            for case in rounds:
                results: dict[str, Any] = {}
                for which in order:
                    if which == "direct":
                        results[which] = direct(a, env(api), log)
                    else:
                        results[which] = flow(b, env(api), log, OUT / f"summary-{index}-{case.replace(' ', '-')}.json")
                    print(f"round {index + 1}, {case}, {which}: {results[which]['wall_s']:.1f} s", flush=True)
                rounds[case].append(row(case, results["direct"], results["flow"]))
        no_server = flow(b, env(None), log, OUT / "summary-no-server.json")
    finally:
        stop(server)
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    report = {
        "machine": info,
        "preset": args.preset,
        "repeats": args.repeats,
        "rows": [median_rows(rows) for rows in rounds.values()],
        "rounds": rounds,
        "server_start_s": round(server_start, 2),
        "no_server_s": no_server["wall_s"],
        "target": f"overhead <= {TARGET_SECONDS:g} s or <= {100 * (TARGET_RATIO - 1):.0f} %",
    }
    publish(report, docs=not args.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
