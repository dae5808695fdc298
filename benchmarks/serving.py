"""Serving benchmark: where a request's time goes, and how close the BentoML service (serving/service.py) comes to
the network alone.

1. The limit: the peak of a large float32 matrix product in this process, and the network's executed FLOPs (tile
   overlap included, counted by torch's FlopCounterMode) and achieved GFLOP/s per input size.
2. Encodings of one enhanced output (the 512x512 input's): Pillow's PNG levels against the service's PNG writer,
   WebP methods and JPEG; time, size and (lossy) PSNR. The service's defaults are chosen from this table.
3. Cost breakdown per input size and output format at concurrency 1: the service's own stage times (its
   Server-Timing header: validate, decode, enhance, encode), the network alone (`Enhancer.enhance_tensor` on the
   same image, in this process), conversions (enhance minus network: array <-> tensor <-> PIL), and HTTP/framework
   (client latency minus the server's stages: multipart parsing twice, the upload's temp file, the response, the
   client itself); the network's share of the whole.
4. Throughput for PNG requests at concurrency 1, 4 and 8: the network alone (the limit), the in-process Enhancer
   (decode, `enhance_image`, encode: what the service does without HTTP) and POST /enhance, in alternating blocks;
   requests/s from each path's best round, the ratios from the best rounds and as medians of per-round ratios.
5. Workers and inference threads on all cores (the affinity is widened for this part alone): one worker with torch
   using every core, one worker with two inference threads of one torch thread, two workers.
6. Adaptive batching on against off (POST /enhance_batch, one 64x64 array per request), and the network alone on 8
   such images one by one against one batch of 8.
7. Peak memory for one large input with tiles against without.

The model is params.yaml's architecture, random weights unless --weights names a trained generator folder (speed
does not depend on them), registered in a scratch MLflow store, promoted and imported with
gan_enhance.serving.bento.import_champion, so the servers load it the way a deployment does. Run it pinned to one
core with one torch thread, so that service and limit share the same CPU and other work on the machine does not
move the ratios; parts 5 (and 7, with --threads unset) use what they are given:

    taskset -c 1 .venv/bin/python -m benchmarks.serving --weights models/generator --threads 1 --no-docs
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
from gan_enhance.serving.settings import ServeSettings
from gan_enhance.serving.timing import parse_server_timing

TARGET_NETWORK = 0.8  # service requests/s against the network alone
TARGET_IN_PROCESS = 0.9  # service requests/s against the in-process Enhancer
MAX_PIXELS = 16_777_216
DEFAULTS = ServeSettings()
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Serving"
STAGES = ("validate", "decode", "enhance", "encode")


@dataclass
class NetworkRow:
    input_size: str
    output_size: str
    gflop: float  # executed, tile overlap included
    ms: float  # median
    gflops_per_s: float
    of_peak: float


@dataclass
class EncodingRow:
    encoding: str
    ms: float  # best of a few
    kib: float
    psnr_db: float | None  # lossy only


@dataclass
class BreakdownRow:
    input_size: str
    fmt: str
    requests: int
    response_kib: float
    validate_ms: float  # medians
    decode_ms: float
    network_ms: float
    conversions_ms: float
    encode_ms: float
    http_ms: float
    total_ms: float
    network_share: float


@dataclass
class ThroughputRow:
    input_size: str
    path: str  # "network alone", "in-process Enhancer", "service"
    concurrency: int
    requests: int
    requests_per_s: float  # best round
    p50_ms: float  # over every timed request of every round
    p95_ms: float
    vs_network: float | None = None  # best rounds
    vs_network_median: float | None = None  # median over rounds of the per-round ratio
    vs_in_process: float | None = None
    vs_in_process_median: float | None = None


@dataclass
class ScalingRow:
    setup: str
    concurrency: int
    requests: int
    requests_per_s: float
    p50_ms: float
    vs_best_network: float


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


def best_ms(call: Callable[[], object], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


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


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255


class Client:
    """POST /enhance from any thread (one httpx client per thread)."""

    def __init__(self, url: str) -> None:
        self.url, self.local = url, threading.local()

    def enhance(self, data: bytes, fmt: str | None = None) -> httpx.Response:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(timeout=1200)
        fields = {"format": fmt} if fmt else None
        response = self.local.client.post(f"{self.url}/enhance", files={"image": ("in.png", data)}, data=fields)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
        return response


# --- 1. the limit -------------------------------------------------------------------------------------------------


def matmul_peak(n: int, repeats: int = 5) -> float:
    """GFLOP/s of the best of `repeats` n x n x n float32 matrix products."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    return 2 * n**3 / (best_ms(lambda: a @ b, repeats) / 1000) / 1e9


def executed_flops(enhancer: Any, x: torch.Tensor) -> float:
    """FLOPs of one `enhance_tensor(x)`, tiles and their overlap included (convolutions; activations uncounted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        enhancer.enhance_tensor(x)
    return float(counter.get_total_flops())


def network_rows(enhancer: Any, sizes: list[int], peak: float, repeats: dict[int, int]) -> list[NetworkRow]:
    rows = []
    for side in sizes:
        x = as_tensor(photos(1, side)[0])
        flops = executed_flops(enhancer, x)
        ms = median_ms(lambda x=x: enhancer.enhance_tensor(x), repeats[side])
        gflops = flops / (ms / 1000) / 1e9
        s = enhancer.scale
        rows.append(NetworkRow(f"{side}x{side}", f"{side * s}x{side * s}", flops / 1e9, ms, gflops, gflops / peak))
        print(f"  network {side}x{side}: {ms:.0f} ms, {gflops:.1f} GFLOP/s ({gflops / peak:.0%} of peak)", flush=True)
    return rows


# --- 2. encodings -------------------------------------------------------------------------------------------------


def encoding_rows(output: Image.Image, repeats: int) -> list[EncodingRow]:
    reference = np.asarray(output)

    def pillow(**options: Any) -> Callable[[], bytes]:
        def call() -> bytes:
            buffer = io.BytesIO()
            output.save(buffer, "PNG", **options)
            return buffer.getvalue()

        return call

    def service(fmt: str, **options: Any) -> Callable[[], bytes]:
        return lambda: encode_image(output, fmt, **options).data

    candidates: list[tuple[str, Callable[[], bytes], bool]] = [
        ("PNG, Pillow level 6 (Pillow's default)", pillow(), False),
        ("PNG, Pillow level 1", pillow(compress_level=1), False),
        ("PNG, Pillow level 0", pillow(compress_level=0), False),
        ("PNG, service writer level 0 (stored)", service("png", png_compress_level=0), False),
        ("PNG, service writer level 1 (RLE; default)", service("png", png_compress_level=1), False),
        ("PNG, service writer level 6", service("png", png_compress_level=6), False),
        ("WebP q95, method 0 (default)", service("webp", quality=95, webp_method=0), True),
        ("WebP q95, method 4 (Pillow's default)", service("webp", quality=95, webp_method=4), True),
        ("JPEG q95", service("jpeg", quality=95), True),
    ]
    rows = []
    for name, call, lossy in candidates:
        data = call()
        back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        if not lossy and not np.array_equal(back, reference):
            raise RuntimeError(f"{name} does not round-trip")
        psnr = None
        if lossy:
            mse = float(np.mean((back.astype(np.float64) - reference.astype(np.float64)) ** 2))
            psnr = 10 * np.log10(255.0**2 / mse)
        rows.append(EncodingRow(name, best_ms(call, repeats), len(data) / 1024, psnr))
        print(f"  {name}: {rows[-1].ms:.0f} ms, {rows[-1].kib:.0f} KiB", flush=True)
    return rows


# --- 3. breakdown -------------------------------------------------------------------------------------------------


def breakdown(client: Client, enhancer: Any, sizes: list[int], repeats: dict[int, int]) -> list[BreakdownRow]:
    """Per size: rounds of one network-alone pass then one request per format, so that both see the same load."""
    formats = ("png", "webp", "jpeg")
    rows = []
    for side in sizes:
        array = photos(1, side)[0]
        upload, x = png(array), as_tensor(array)
        for fmt in formats:
            client.enhance(upload, fmt)  # warm-up
        network: list[float] = []
        latencies: dict[str, list[float]] = {fmt: [] for fmt in formats}
        stages: dict[str, dict[str, list[float]]] = {fmt: {stage: [] for stage in STAGES} for fmt in formats}
        sizes_kib: dict[str, float] = {}
        for _ in range(repeats[side]):
            network.append(median_ms(lambda x=x: enhancer.enhance_tensor(x), 1))
            for fmt in formats:
                start = time.perf_counter()
                response = client.enhance(upload, fmt)
                latencies[fmt].append((time.perf_counter() - start) * 1000)
                timing = parse_server_timing(response.headers["server-timing"])
                for stage in STAGES:
                    stages[fmt][stage].append(timing[stage])
                sizes_kib[fmt] = len(response.content) / 1024
        network_ms = statistics.median(network)
        for fmt in formats:
            med = {stage: statistics.median(values) for stage, values in stages[fmt].items()}
            total = statistics.median(latencies[fmt])
            row = BreakdownRow(
                f"{side}x{side}",
                fmt,
                repeats[side],
                sizes_kib[fmt],
                med["validate"],
                med["decode"],
                network_ms,
                med["enhance"] - network_ms,
                med["encode"],
                total - sum(med.values()),
                total,
                network_ms / total,
            )
            rows.append(row)
            print(f"  {side} {fmt}: {total:.0f} ms, network {network_ms:.0f} ms ({row.network_share:.0%})", flush=True)
    return rows


# --- 4. throughput ------------------------------------------------------------------------------------------------


def throughput(
    client: Client, enhancer: Any, side: int, levels: list[int], count: int, rounds: int
) -> list[ThroughputRow]:
    arrays = photos(min(count, 4), side)
    uploads = [png(a) for a in arrays]
    tensors = [as_tensor(a) for a in arrays]
    n = len(arrays)

    def network(i: int) -> None:
        enhancer.enhance_tensor(tensors[i % n])

    def in_process(i: int) -> None:
        image = decode_upload(uploads[i % n], MAX_PIXELS)
        encode_image(enhancer.enhance_image(image), "png", png_compress_level=DEFAULTS.png_compress_level)

    def service(i: int) -> None:
        client.enhance(uploads[i % n])

    paths = {"network alone": network, "in-process Enhancer": in_process, "service": service}
    for call in paths.values():
        call(0)  # warm-up
    rows = []
    for level in levels:
        runs: dict[str, list[tuple[float, list[float]]]] = {path: [] for path in paths}
        for r in range(rounds):
            names = list(paths)
            for path in names[r % len(names) :] + names[: r % len(names)]:
                wall, latencies = run_block(paths[path], count, level)
                runs[path].append((count / wall, latencies))
        best = {path: max(rate for rate, _ in runs[path]) for path in paths}

        for path in paths:
            latencies = [x for _, run in runs[path] for x in run]
            row = ThroughputRow(
                f"{side}x{side}",
                path,
                level,
                count * rounds,
                best[path],
                percentile(latencies, 50) * 1000,
                percentile(latencies, 95) * 1000,
            )
            if path != "network alone":
                row.vs_network = best[path] / best["network alone"]
                row.vs_network_median = per_round(runs[path], runs["network alone"])
            if path == "service":
                row.vs_in_process = best[path] / best["in-process Enhancer"]
                row.vs_in_process_median = per_round(runs[path], runs["in-process Enhancer"])
            rows.append(row)
            print(f"  {side} {path:20s} c={level}: {row.requests_per_s:.2f} req/s", flush=True)
    return rows


def per_round(runs: list[tuple[float, list[float]]], reference: list[tuple[float, list[float]]]) -> float:
    """The median over rounds of runs' requests/s over the reference's in the same round."""
    return statistics.median(run[0] / ref[0] for run, ref in zip(runs, reference, strict=True))


# --- 5. workers and threads -----------------------------------------------------------------------------------------


def scaling(
    env: dict[str, str], enhancer: Any, side: int, concurrency: int, count: int, rounds: int, log: Path
) -> list[ScalingRow]:
    """On every core the machine has: the network alone (torch on all cores; one torch thread per stream from as
    many streams as cores) and the service with several workers/threads setups, at one concurrency."""
    cores = os.cpu_count() or 1
    saved_affinity, saved_threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, range(cores))  # this thread; threads and servers started from here inherit it
    arrays = photos(min(count, 4), side)
    uploads, tensors = [png(a) for a in arrays], [as_tensor(a) for a in arrays]
    rows: list[ScalingRow] = []
    try:
        network: list[tuple[str, int, float, float]] = []
        for threads, streams in ((cores, 1), (1, cores)):
            torch.set_num_threads(threads)
            enhancer.enhance_tensor(tensors[0])
            results = [
                run_block(lambda i: enhancer.enhance_tensor(tensors[i % len(tensors)]), count, streams)
                for _ in range(rounds)
            ]
            wall, _ = min(results, key=lambda r: r[0])
            latencies = [x for _, run in results for x in run]
            setup = f"network alone: {streams} stream(s), {threads} torch thread(s) each"
            network.append((setup, streams, count / wall, percentile(latencies, 50)))
        best_network = max(rate for _, _, rate, _ in network)
        for setup, streams, rate, p50 in network:
            rows.append(ScalingRow(setup, streams, count * rounds, rate, p50 * 1000, rate / best_network))
        setups = [
            (f"service: 1 worker, 1 inference thread, torch threads {cores}", {"TORCH_THREADS": str(cores)}),
            (f"service: 1 worker, {cores} inference threads, torch threads 1", {"THREADS": str(cores)}),
            (f"service: {cores} workers, torch threads 1", {"WORKERS": str(cores)}),
        ]
        for setup, settings in setups:
            server_env = {**env, "GAN_ENHANCE_SERVE_TORCH_THREADS": "1"}
            server_env.update({f"GAN_ENHANCE_SERVE_{k}": v for k, v in settings.items()})
            with serve_process(env=server_env, log=log) as (url, _):
                client = Client(url)
                for i in range(concurrency):  # every worker warm
                    client.enhance(uploads[i % len(uploads)])
                results = [
                    run_block(lambda i, c=client: c.enhance(uploads[i % len(uploads)]), count, concurrency)
                    for _ in range(rounds)
                ]
            wall, _ = min(results, key=lambda r: r[0])
            latencies = [x for _, run in results for x in run]
            rate = count / wall
            rows.append(
                ScalingRow(
                    setup, concurrency, count * rounds, rate, percentile(latencies, 50) * 1000, rate / best_network
                )
            )
            print(f"  {setup}: {rate:.2f} req/s", flush=True)
    finally:
        torch.set_num_threads(saved_threads)
        os.sched_setaffinity(0, saved_affinity)
    return rows


# --- 6. adaptive batching -----------------------------------------------------------------------------------------


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


def network_batching(enhancer: Any, side: int, images: int, repeats: int) -> dict[str, float]:
    """ms per image of `enhance_batch` on `images` same-size arrays: one by one against one batch."""
    arrays = photos(images, side)
    single = best_ms(lambda: [enhancer.enhance_batch([a]) for a in arrays], repeats) / images
    batched = best_ms(lambda: enhancer.enhance_batch(arrays), repeats) / images
    return {"images": images, "side": side, "one_by_one_ms_per_image": single, "batched_ms_per_image": batched}


def mean_batch_counts(metrics_text: str) -> tuple[float, float]:
    total = re.search(r"^bentoml_service_adaptive_batch_size_sum\{[^}]*\} ([0-9.e+]+)$", metrics_text, re.M)
    count = re.search(r"^bentoml_service_adaptive_batch_size_count\{[^}]*\} ([0-9.e+]+)$", metrics_text, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


# --- 7. memory ----------------------------------------------------------------------------------------------------


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


def _ratio(value: float | None, target: float) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" + ("" if value >= target else " (below)")


def tables(report: dict[str, Any]) -> str:
    peak = report["peak_gflops"]
    lines = [
        f"The limit: a {report['matmul_n']}^3 float32 matrix product runs at {peak:.1f} GFLOP/s in this process. "
        "The network (Enhancer.enhance_tensor, tiles 256 with 16 px of context, executed FLOPs):",
        "",
        "| input | output | GFLOP executed | ms (median) | GFLOP/s | of the matmul peak |",
        "|---|---|---|---|---|---|",
    ]
    for n in report["network"]:
        lines.append(
            f"| {n['input_size']} | {n['output_size']} | {n['gflop']:.1f} | {n['ms']:.0f} | {n['gflops_per_s']:.1f} "
            f"| {n['of_peak']:.0%} |"
        )
    if report["encodings"]:
        lines += [
            "",
            f"Encoding one enhanced output ({report['encoding_output']}, best of {report['encoding_repeats']}):",
            "",
            "| encoding | ms | KiB | PSNR dB (lossy) |",
            "|---|---|---|---|",
        ]
        for e in report["encodings"]:
            psnr = f"{e['psnr_db']:.1f}" if e["psnr_db"] is not None else "exact"
            lines.append(f"| {e['encoding']} | {e['ms']:.0f} | {e['kib']:.0f} | {psnr} |")
    lines += [
        "",
        "Where a request's time goes, concurrency 1 (POST /enhance with `format`; medians; validate, decode, encode "
        "from the service's Server-Timing header; network: enhance_tensor alone in the client process; conversions: "
        "the service's enhance stage minus the network; HTTP/framework: client latency minus the service's stages):",
        "",
        "| input | format | answer KiB | validate ms | decode ms | network ms | conversions ms | encode ms "
        "| HTTP/framework ms | total ms | network share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report["breakdown"]:
        lines.append(
            f"| {b['input_size']} | {b['fmt']} | {b['response_kib']:.0f} | {b['validate_ms']:.1f} "
            f"| {b['decode_ms']:.1f} | {b['network_ms']:.0f} | {b['conversions_ms']:.1f} | {b['encode_ms']:.1f} "
            f"| {b['http_ms']:.1f} | {b['total_ms']:.0f} | {b['network_share']:.0%} |"
        )
    lines += [
        "",
        "Throughput, PNG answers (requests/s of each path's best round; ratios from the best rounds, then the "
        "median of per-round ratios; targets: service >= "
        f"{TARGET_NETWORK} x network alone, >= {TARGET_IN_PROCESS} x in-process Enhancer):",
        "",
        "| input | path | concurrency | requests/s | p50 ms | p95 ms | vs network alone (median) "
        "| vs in-process (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in report["throughput"]:
        vs_net = vs_in = ""
        if t["vs_network"] is not None:
            vs_net = f"{_ratio(t['vs_network'], TARGET_NETWORK)} ({t['vs_network_median']:.2f})"
        if t["vs_in_process"] is not None:
            vs_in = f"{_ratio(t['vs_in_process'], TARGET_IN_PROCESS)} ({t['vs_in_process_median']:.2f})"
        lines.append(
            f"| {t['input_size']} | {t['path']} | {t['concurrency']} | {t['requests_per_s']:.2f} | {t['p50_ms']:.0f} "
            f"| {t['p95_ms']:.0f} | {vs_net} | {vs_in} |"
        )
    if report["scaling"]:
        lines += [
            "",
            f"Workers and threads on all {report['machine']['cpu_count']} cores ({report['scaling_input']} PNG "
            "requests; the network-alone rows use the client process; best round):",
            "",
            "| setup | concurrency | requests/s | p50 ms | vs best network alone |",
            "|---|---|---|---|---|",
        ]
        for s in report["scaling"]:
            lines.append(
                f"| {s['setup']} | {s['concurrency']} | {s['requests_per_s']:.2f} | {s['p50_ms']:.0f} "
                f"| {s['vs_best_network']:.2f} |"
            )
    if report["batching"]:
        nb = report["network_batching"]
        lines += [
            "",
            "Adaptive batching, POST /enhance_batch (one 64x64 uint8 array per request, JSON); network alone on "
            f"{nb['images']} {nb['side']}x{nb['side']} images: {nb['one_by_one_ms_per_image']:.1f} ms per image one by "
            f"one, {nb['batched_ms_per_image']:.1f} ms per image as one batch:",
            "",
            "| batching | concurrency | requests/s | p50 ms | p95 ms | p99 ms | requests per batch |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in report["batching"]:
            per_batch = f"{b['requests_per_batch']:.2f}" if b["requests_per_batch"] else "1 (off)"
            lines.append(
                f"| {b['batching']} | {b['concurrency']} | {b['requests_per_s']:.2f} | {b['p50_ms']:.0f} "
                f"| {b['p95_ms']:.0f} | {b['p99_ms']:.0f} | {per_batch} |"
            )
    if report["memory"]:
        lines += [
            "",
            "Peak memory for one large input: the server worker during a POST /enhance (VmHWM; decode, Enhancer, "
            "PNG encode), and, in a fresh process, `Enhancer.enhance_tensor` alone (the network and its float32 "
            "output):",
            "",
            "| what, tiling | input | output | peak MiB | idle MiB (model loaded) | peak - idle MiB | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in report["memory"]:
            lines.append(
                f"| {m['tiling']} | {m['input_size']} | {m['output_size']} | {m['peak_mib']:.0f} | {m['idle_mib']:.0f} "
                f"| {m['peak_mib'] - m['idle_mib']:.0f} | {m['seconds']:.1f} |"
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
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024], help="breakdown input sides")
    parser.add_argument("--throughput-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=8, help="requests per timed block (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per level (default: %(default)s)")
    parser.add_argument("--memory-size", type=int, default=2048, help="input side for memory (default: %(default)s)")
    parser.add_argument("--weights", type=Path, help="a trained generator folder (default: random weights)")
    parser.add_argument("--threads", type=int, help="torch threads, in-process and in the server (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny model and few requests: checks the script")
    parser.add_argument("--skip", nargs="*", default=[], choices=["scaling", "batching", "memory"])
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
    matmul_n = 2048
    if args.quick:
        tree["task"] = {**tree["task"], "name": "sr", "sr": {"scale": 2}}
        tree["model"]["generator"] = {"name": "srvgg", "num_feat": 8, "num_conv": 2}
        args.requests, args.rounds, args.memory_size = min(args.requests, 4), 1, min(args.memory_size, 256)
        args.sizes, args.throughput_sizes, matmul_n = [64, 128], [128], 512
    info = machine()
    info["affinity"] = sorted(os.sched_getaffinity(0))
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
    repeats = {side: max(3, min(7, int(2e6 / side**2))) for side in {*args.sizes, *args.throughput_sizes, 512}}

    from gan_enhance.lifecycle.registry import load_enhancer
    from gan_enhance.serving.bento import import_champion

    report: dict[str, Any] = {"machine": info, "model": described, "matmul_n": matmul_n}
    with bentoml_home(work / "bentoml") as home:
        env["BENTOML_HOME"] = str(home)
        import_champion(champion["model_name"], champion["tracking_uri"])
        enhancer = load_enhancer(
            champion["model_name"], "champion", champion["tracking_uri"], device="cpu", tile=256, tile_pad=16
        )
        settings = {**env, "GAN_ENHANCE_SERVE_TILE": "256", "GAN_ENHANCE_SERVE_TILE_PAD": "16"}
        print("the limit:", flush=True)
        report["peak_gflops"] = matmul_peak(matmul_n)
        report["network"] = [asdict(r) for r in network_rows(enhancer, args.sizes, report["peak_gflops"], repeats)]
        print("encodings:", flush=True)
        side = max(s for s in args.sizes if s <= 512)
        output = enhancer.enhance_image(Image.fromarray(photos(1, side)[0]))
        report["encoding_output"] = f"{output.width}x{output.height} RGB from the {side}x{side} input"
        report["encoding_repeats"] = 3
        report["encodings"] = [asdict(r) for r in encoding_rows(output, 3)]
        with serve_process(env=settings, log=log) as (url, _):
            client = Client(url)
            print("breakdown:", flush=True)
            report["breakdown"] = [asdict(r) for r in breakdown(client, enhancer, args.sizes, repeats)]
            print("throughput:", flush=True)
            report["throughput"] = [
                asdict(r)
                for side in args.throughput_sizes
                for r in throughput(client, enhancer, side, args.concurrency, args.requests, args.rounds)
            ]
        report["scaling"], report["scaling_input"] = [], ""
        if "scaling" not in args.skip:
            print("workers and threads:", flush=True)
            side = max(args.throughput_sizes)
            report["scaling_input"] = f"{side}x{side}"
            rows = scaling(settings, enhancer, side, 4, args.requests, args.rounds, log)
            report["scaling"] = [asdict(r) for r in rows]
            report["load_average_1m_after_scaling"] = round(os.getloadavg()[0], 2)
        report["batching"], report["network_batching"] = [], {}
        if "batching" not in args.skip:
            print("batching:", flush=True)
            report["network_batching"] = network_batching(enhancer, 64, 8, 3)
            batch_levels = sorted({1, max(args.concurrency)})
            report["batching"] = [asdict(b) for b in batching(settings, batch_levels, args.requests * 2, 64, log)]
        report["memory"] = []
        if "memory" not in args.skip:
            print("memory:", flush=True)
            report["memory"] = [asdict(m) for m in memory(env, args.memory_size, scale, log, champion["model_dir"])]

    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["settings"] = vars(args) | {"out": str(args.out), "work": str(args.work), "weights": str(args.weights)}
    report["service_defaults"] = DEFAULTS.model_dump()
    rendered = tables(report)
    print(rendered)
    cpus = ",".join(map(str, info["affinity"]))
    header = (
        f"{machine_line(info)}; this process and the servers it started ran on CPU(s) {cpus} (part 5 on all).\n"
        f"Model: {described}, served by `serving/service.py` (one worker, one inference thread, tiles 256 with "
        f"16 px of context, PNG level {DEFAULTS.png_compress_level}, WebP method {DEFAULTS.webp_method}) from the "
        "BentoML store the way `make bento` imports it, over HTTP on 127.0.0.1 (raw multipart from httpx; the "
        f"client shares the CPU). Throughput: {args.rounds} round(s) of {args.requests} requests per path and "
        "concurrency level, the paths' blocks alternating."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    name = "serving_quick" if args.quick else "serving"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / f"{name}.md").write_text(f"# Serving: where a request's time goes\n\n{header}\n\n{rendered}\n")
    if not args.no_docs and not args.quick:
        update_docs(
            f"`.venv/bin/python -m benchmarks.serving` ({name}.md, .json in benchmarks/results/).\n"
            f"{header}\n\n{rendered}\n"
        )
        print(f"updated {DOCS}")
    print(f"wrote {args.out / name}.md and .json in {info['wall_seconds']} s")


if __name__ == "__main__":
    main()
