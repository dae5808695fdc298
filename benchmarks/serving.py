"""Serving benchmark: the BentoML service (serving/service.py) against the in-process Enhancer.

1. Throughput and latency for 256x256 inputs at concurrency 1, 4 and 8: POST /enhance (PNG in, PNG out, raw
   multipart over HTTP on 127.0.0.1) against the in-process Enhancer (`enhance_image` on the same images, already
   decoded, from as many threads). Ratio = service requests/s / in-process requests/s (target >= 0.8). Service and
   in-process blocks alternate for --rounds rounds; the best round of each is reported (the machine is shared:
   other processes only ever add time), with the median ratio and the ratio of CPU seconds per request (server
   worker + client vs in-process), which other processes disturb less.
2. Adaptive batching on against off: POST /enhance_batch (one 64x64 uint8 array per request, JSON) at concurrency
   1 and 8, each against its own server; mean requests per batch from the server's /metrics.
3. Peak memory for one 2048x2048 input with tiling (tile 256, pad 16) against without (tile 0): the server worker's
   peak resident memory (VmHWM) while it handles the request, measured from a fresh peak after warm-up.

The model is params.yaml's architecture (the production config), random weights unless --weights names a trained
generator folder (speed does not depend on them), registered in a scratch MLflow store, promoted to champion and
imported with gan_enhance.serving.bento.import_champion, so the servers load it the way a deployment does.

    .venv/bin/python -m benchmarks.serving            # ~10-15 min on 2 cores; writes benchmarks/results/serving.*
    .venv/bin/python -m benchmarks.serving --quick    # tiny model, a minute or two: checks the script
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch
from PIL import Image

if not __package__:  # run as `python benchmarks/serving.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, RESULTS, WORK, machine, machine_line
from gan_enhance.config import load_params
from gan_enhance.device import disable_telemetry
from gan_enhance.serving.codec import decode_upload, encode_image
from gan_enhance.serving.local import bentoml_home, register_champion, serve_process

TARGET_RATIO = 0.8
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Serving"


@dataclass
class Row:
    path: str  # "in-process" or "service"
    concurrency: int
    requests: int
    requests_per_s: float  # best round
    p50_ms: float  # latency percentiles over every timed request of every round
    p95_ms: float
    p99_ms: float
    cpu_s_per_request: float  # best round
    ratio: float | None = None  # service / in-process requests/s, best rounds
    ratio_median: float | None = None  # median over rounds of the per-round ratio
    ratio_cpu: float | None = None  # in-process CPU s per request / service CPU s per request


@dataclass
class BatchRow:
    batching: str
    concurrency: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests_per_batch: float | None


@dataclass
class MemoryRow:
    tiling: str
    input_size: str
    output_size: str
    peak_mib: float  # worker VmHWM during the request
    idle_mib: float  # worker RSS before it (model loaded, warmed up)
    seconds: float


# --- measuring ----------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_block(call: Callable[[int], None], count: int, concurrency: int) -> tuple[float, list[float]]:
    """`count` calls from `concurrency` threads; (wall seconds, per-call latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def timed(i: int) -> None:
        start = time.perf_counter()
        call(i)
        with lock:
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(timed, range(count)))
    return time.perf_counter() - start, latencies


def own_cpu(process: psutil.Process) -> float:
    """CPU seconds of the process itself (not its children: the servers it started)."""
    times = process.cpu_times()
    return times.user + times.system


def tree_cpu(process: psutil.Process) -> float:
    """CPU seconds of a process and its descendants (live ones)."""
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def worker(server: Any) -> psutil.Process:
    """The BentoML worker process (the one that loads the model) under a `bentoml serve` process."""
    for proc in psutil.Process(server.pid).children(recursive=True):
        if any("_bentoml_impl.worker" in part for part in proc.cmdline()):
            return proc
    raise RuntimeError("no BentoML worker process found")


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def photos(count: int, side: int) -> list[np.ndarray]:
    """Crops of scikit-image's photos, side x side."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        image = sources[i % len(sources)]
        if min(image.shape[:2]) < side:
            image = np.asarray(Image.fromarray(image).resize((side * 2, side * 2), Image.BICUBIC))
        top = int(rng.integers(0, image.shape[0] - side + 1))
        left = int(rng.integers(0, image.shape[1] - side + 1))
        out.append(np.ascontiguousarray(image[top : top + side, left : left + side]))
    return out


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


# --- the three measurements ---------------------------------------------------------------------------------------


def throughput(
    url: str, server: Any, enhancer: Any, levels: list[int], count: int, rounds: int, side: int, codec_ms: list[float]
) -> list[Row]:
    """Rows per concurrency level; codec_ms[0] gets the PNG decode + encode time per request (in-process)."""
    images = photos(count, side)
    uploads = [png(image) for image in images]
    decoded = [Image.open(io.BytesIO(data)) for data in uploads]
    for image in decoded:
        image.load()
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=600)
        return local.client

    def service_call(i: int) -> None:
        response = client().post(f"{url}/enhance", files={"image": ("in.png", uploads[i % count])})
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

    def local_call(i: int) -> None:
        enhancer.enhance_image(decoded[i % count])

    outputs = [enhancer.enhance_image(image) for image in decoded[:4]]
    start = time.perf_counter()
    for data, output in zip(uploads[:4], outputs, strict=True):
        encode_image(output, "png")  # what the service adds around the Enhancer, apart from HTTP
        decode_upload(data, 16_777_216)
    codec_ms[0] = (time.perf_counter() - start) / len(outputs) * 1000
    me, srv = psutil.Process(), psutil.Process(server.pid)
    service_call(0), local_call(0)  # warm-up
    rows: list[Row] = []
    for level in levels:
        runs: dict[str, list[tuple[float, float, list[float]]]] = {"in-process": [], "service": []}
        for r in range(rounds):
            order = ["in-process", "service"] if r % 2 == 0 else ["service", "in-process"]
            for path in order:
                cpu_before = own_cpu(me) + (tree_cpu(srv) if path == "service" else 0.0)
                call = local_call if path == "in-process" else service_call
                wall, latencies = run_block(call, count, level)
                cpu = own_cpu(me) + (tree_cpu(srv) if path == "service" else 0.0) - cpu_before
                runs[path].append((count / wall, cpu / count, latencies))
        best = {path: max(runs[path], key=lambda run: run[0]) for path in runs}
        per_round = [s[0] / i[0] for s, i in zip(runs["service"], runs["in-process"], strict=True)]
        for path in ("in-process", "service"):
            latencies = [x for run in runs[path] for x in run[2]]
            row = Row(
                path,
                level,
                count * rounds,
                best[path][0],
                percentile(latencies, 50) * 1000,
                percentile(latencies, 95) * 1000,
                percentile(latencies, 99) * 1000,
                best[path][1],
            )
            if path == "service":
                row.ratio = best["service"][0] / best["in-process"][0]
                row.ratio_median = statistics.median(per_round)
                row.ratio_cpu = best["in-process"][1] / best["service"][1]
            rows.append(row)
            print(f"  {path:10s} c={level}: {row.requests_per_s:.2f} req/s, p50 {row.p50_ms:.0f} ms", flush=True)
    return rows


def batching(env: dict[str, str], levels: list[int], count: int, side: int, log: Path) -> list[BatchRow]:
    arrays = [image.tolist() for image in photos(count, side)]
    rows: list[BatchRow] = []
    for mode in ("on", "off"):
        with serve_process(env={**env, "GAN_ENHANCE_SERVE_BATCHING": str(mode == "on").lower()}, log=log) as (url, _):
            local = threading.local()

            def call(i: int, url: str = url, local: threading.local = local) -> None:
                if not hasattr(local, "client"):
                    local.client = httpx.Client(timeout=600)
                response = local.client.post(f"{url}/enhance_batch", json={"images": [arrays[i % count]]})
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

            call(0)
            for level in levels:
                before = mean_batch_counts(httpx.get(f"{url}/metrics").text)
                wall, latencies = run_block(call, count, level)
                after = mean_batch_counts(httpx.get(f"{url}/metrics").text)
                per_batch = None
                if mode == "on" and after[1] > before[1]:
                    per_batch = (after[0] - before[0]) / (after[1] - before[1])
                rows.append(
                    BatchRow(
                        mode,
                        level,
                        count,
                        count / wall,
                        percentile(latencies, 50) * 1000,
                        percentile(latencies, 95) * 1000,
                        percentile(latencies, 99) * 1000,
                        per_batch,
                    )
                )
                print(f"  batching {mode} c={level}: {count / wall:.2f} req/s", flush=True)
    return rows


def mean_batch_counts(metrics_text: str) -> tuple[float, float]:
    total = re.search(r"^bentoml_service_adaptive_batch_size_sum\{[^}]*\} ([0-9.e+]+)$", metrics_text, re.M)
    count = re.search(r"^bentoml_service_adaptive_batch_size_count\{[^}]*\} ([0-9.e+]+)$", metrics_text, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


def network_peak(folder: str, side: int, tile: int) -> tuple[float, float, float]:
    """In a fresh process: (peak MiB above idle, idle MiB, seconds) of Enhancer.enhance_tensor alone (the network
    and its float32 output) on a side x side input."""
    import torch

    from gan_enhance.inference import Enhancer

    enhancer = Enhancer.from_dir(folder, device="cpu", tile=tile, tile_pad=16)
    enhancer.enhance_tensor(torch.rand(1, 3, 32, 32))
    x = torch.rand(1, 3, side, side)
    idle = psutil.Process().memory_info().rss / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    enhancer.enhance_tensor(x)
    return vm_hwm_mib(os.getpid()) - idle, idle, time.perf_counter() - start


def memory(env: dict[str, str], side: int, scale: int, log: Path, model_dir: Path) -> list[MemoryRow]:
    image = png(np.asarray(Image.fromarray(photos(1, 512)[0]).resize((side, side), Image.BICUBIC)))
    rows: list[MemoryRow] = []
    for label, tile in (("tiles 256 (pad 16)", "256"), ("none (tile 0)", "0")):
        settings = {**env, "GAN_ENHANCE_SERVE_TILE": tile, "GAN_ENHANCE_SERVE_TILE_PAD": "16"}
        with serve_process(env=settings, log=log) as (url, server):
            proc = worker(server)
            httpx.post(f"{url}/enhance", files={"image": ("s.png", png(photos(1, 64)[0]))}, timeout=600)
            idle = proc.memory_info().rss / 2**20
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # restart the peak from the current RSS
            start = time.perf_counter()
            response = httpx.post(f"{url}/enhance", files={"image": ("big.png", image)}, timeout=1200)
            seconds = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
            rows.append(
                MemoryRow(
                    f"POST /enhance, {label}",
                    f"{side}x{side}",
                    f"{side * scale}x{side * scale}",
                    vm_hwm_mib(proc.pid),
                    idle,
                    seconds,
                )
            )
            print(f"  memory, tiling {label}: peak {rows[-1].peak_mib:.0f} MiB in {seconds:.1f} s", flush=True)
    for label, tile in (("tiles 256 (pad 16)", 256), ("none (tile 0)", 0)):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            above, idle, seconds = pool.apply(network_peak, (str(model_dir), side, tile))
        rows.append(
            MemoryRow(
                f"enhance_tensor, {label}",
                f"{side}x{side}",
                f"{side * scale}x{side * scale}",
                idle + above,
                idle,
                seconds,
            )
        )
        print(f"  memory, network only, tiling {label}: +{above:.0f} MiB in {seconds:.1f} s", flush=True)
    return rows


# --- report -------------------------------------------------------------------------------------------------------


def tables(rows: list[Row], batch_rows: list[BatchRow], memory_rows: list[MemoryRow], side: int) -> str:
    lines = [
        f"Throughput and latency, {side}x{side} inputs (POST /enhance: PNG in and out, over HTTP on 127.0.0.1):",
        "",
        "| path | concurrency | requests/s | p50 ms | p95 ms | p99 ms | CPU s/request | ratio (req/s) "
        "| ratio, median round | ratio (CPU) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.path == "service":
            verdict = "ok" if (r.ratio or 0) >= TARGET_RATIO else f"below {TARGET_RATIO}"
            ratios = f"{r.ratio:.2f} | {r.ratio_median:.2f} | {r.ratio_cpu:.2f} | {verdict}"
            name = "service POST /enhance"
        else:
            ratios, name = "| | |", "in-process Enhancer"
        lines.append(
            f"| {name} | {r.concurrency} | {r.requests_per_s:.2f} | {r.p50_ms:.0f} | {r.p95_ms:.0f} | {r.p99_ms:.0f} "
            f"| {r.cpu_s_per_request:.2f} | {ratios} |"
        )
    if batch_rows:
        lines += [
            "",
            "Adaptive batching, POST /enhance_batch (one 64x64 uint8 array per request, JSON):",
            "",
            "| batching | concurrency | requests/s | p50 ms | p95 ms | p99 ms | requests per batch |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in batch_rows:
            per_batch = f"{b.requests_per_batch:.2f}" if b.requests_per_batch else "1 (off)"
            lines.append(
                f"| {b.batching} | {b.concurrency} | {b.requests_per_s:.2f} | {b.p50_ms:.0f} | {b.p95_ms:.0f} "
                f"| {b.p99_ms:.0f} | {per_batch} |"
            )
    if memory_rows:
        lines += [
            "",
            "Peak memory for one large input: the server worker during a POST /enhance (VmHWM; decode, Enhancer, "
            "PNG encode), and, in a fresh process, `Enhancer.enhance_tensor` alone (the network and its float32 "
            "output):",
            "",
            "| what, tiling | input | output | peak MiB | idle MiB (model loaded) | peak - idle MiB | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in memory_rows:
            lines.append(
                f"| {m.tiling} | {m.input_size} | {m.output_size} | {m.peak_mib:.0f} | {m.idle_mib:.0f} "
                f"| {m.peak_mib - m.idle_mib:.0f} | {m.seconds:.1f} |"
            )
    return "\n".join(lines)


def update_docs(section: str, docs: Path = DOCS) -> None:
    """Put `section` under `## Serving` in docs/benchmarks.md: replace that section when it is there (up to the
    next `## ` heading), else append it; the rest of the file is left as it is."""
    docs.parent.mkdir(parents=True, exist_ok=True)
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{SECTION}\n\n{section.strip()}\n"
    match = re.search(rf"^{re.escape(SECTION)}\s*$", text, re.M)
    if match:
        following = re.search(r"^## ", text[match.end() :], re.M)
        end = match.end() + following.start() if following else len(text)
        text = text[: match.start()] + block + ("\n" + text[end:] if following else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    docs.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=16, help="requests per timed block (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per level (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="input side for throughput (default: %(default)s)")
    parser.add_argument("--memory-size", type=int, default=2048, help="input side for memory (default: %(default)s)")
    parser.add_argument("--weights", type=Path, help="a trained generator folder (default: random weights)")
    parser.add_argument("--threads", type=int, help="torch threads, in-process and in the server (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny model and few requests: checks the script")
    parser.add_argument("--skip", nargs="*", default=[], choices=["batching", "memory"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=WORK / "serving", help="scratch folder (default: %(default)s)")
    parser.add_argument("--no-docs", action="store_true", help=f"do not update {DOCS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    disable_telemetry()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "registry").mkdir(parents=True)
    tree = load_params(REPO / "params.yaml").model_dump(mode="json")
    tree["tracking"]["uri"] = f"sqlite:///{work / 'registry' / 'mlflow.db'}"
    if args.quick:
        tree["task"] = {**tree["task"], "name": "sr", "sr": {"scale": 2}}
        tree["model"]["generator"] = {"name": "srvgg", "num_feat": 8, "num_conv": 2}
        args.requests, args.rounds, args.memory_size = min(args.requests, 8), 1, min(args.memory_size, 512)
    info = machine()
    started = time.perf_counter()
    champion = register_champion(work / "registry", tree, args.weights)
    params = champion["params"]
    scale = json.loads((champion["model_dir"] / "card.json").read_text())["scale"]
    generator = params.model.generator
    described = (
        f"{params.task.name} x{scale}, {generator.name} ("
        + ", ".join(f"{k} {v}" for k, v in generator.kwargs.items())
        + f"), {'trained weights' if args.weights else 'random weights'}"
    )
    print(f"model: {described}", flush=True)
    env = {"GAN_ENHANCE_SERVE_DEVICE": "cpu", "GAN_ENHANCE_SERVE_TIMEOUT_S": "1200", "BENTOML_HOME": ""}
    if args.threads:
        torch.set_num_threads(args.threads)
        env["GAN_ENHANCE_SERVE_TORCH_THREADS"] = str(args.threads)
    info["torch_threads"] = torch.get_num_threads()
    log = work / "servers.log"

    from gan_enhance.lifecycle.registry import load_enhancer
    from gan_enhance.serving.bento import import_champion

    with bentoml_home(work / "bentoml") as home:
        env["BENTOML_HOME"] = str(home)
        import_champion(champion["model_name"], champion["tracking_uri"])
        enhancer = load_enhancer(
            champion["model_name"], "champion", champion["tracking_uri"], device="cpu", tile=256, tile_pad=16
        )
        settings = {**env, "GAN_ENHANCE_SERVE_TILE": "256", "GAN_ENHANCE_SERVE_TILE_PAD": "16"}
        print("throughput:", flush=True)
        codec_ms = [float("nan")]
        with serve_process(env=settings, log=log) as (url, server):
            rows = throughput(url, server, enhancer, args.concurrency, args.requests, args.rounds, args.size, codec_ms)
        batch_rows = []
        if "batching" not in args.skip:
            print("batching:", flush=True)
            batch_levels = sorted({1, max(args.concurrency)})
            batch_rows = batching(settings, batch_levels, args.requests * 2, 64, log)
        memory_rows = []
        if "memory" not in args.skip:
            print("memory:", flush=True)
            memory_rows = memory(env, args.memory_size, scale, log, champion["model_dir"])

    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    rendered = tables(rows, batch_rows, memory_rows, args.size)
    print(rendered)
    header = (
        f"{machine_line(info)}.\n"
        f"Model: {described}, served by `serving/service.py` (one worker, one inference thread, tiles 256 with "
        f"16 px of context unless stated) from the BentoML store the way `make bento` imports it. "
        f"{args.rounds} round(s) of {args.requests} requests per concurrency level, service and in-process blocks "
        "alternating; requests/s from each path's best round, latency percentiles over every timed request "
        "(p99 of a few dozen requests is close to the maximum). In-process: `Enhancer.enhance_image` on the "
        f"decoded images from as many threads; the service also decodes the PNG upload and encodes the PNG answer "
        f"({codec_ms[0]:.0f} ms per request measured in-process). CPU s/request: the server's process tree plus "
        f"the client, against the in-process process. Target: service >= {TARGET_RATIO} x in-process requests/s."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": info,
        "model": described,
        "png_codec_ms_per_request": codec_ms[0],
        "settings": vars(args) | {"out": str(args.out), "work": str(args.work), "weights": str(args.weights)},
        "throughput": [asdict(r) for r in rows],
        "batching": [asdict(b) for b in batch_rows],
        "memory": [asdict(m) for m in memory_rows],
    }
    name = "serving_quick" if args.quick else "serving"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(
        f"# Serving: BentoML service vs in-process Enhancer\n\n{header}\n\n{rendered}\n"
    )
    if not args.no_docs and not args.quick:
        update_docs(
            f"`.venv/bin/python -m benchmarks.serving` ({name}.md, .json in benchmarks/results/).\n"
            f"{header}\n\n{rendered}\n"
        )
        print(f"updated {DOCS}")
    print(f"wrote {args.out / name}.md and .json in {info['wall_seconds']} s")


if __name__ == "__main__":
    main()
