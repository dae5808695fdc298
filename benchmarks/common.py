"""What both benchmarks share: benchmark configs on top of params.yaml, and a description of the machine."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from gan_enhance.config import Params, load_params
from gan_enhance.metric_facts import INTERVAL_SUFFIXES, Metric

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "configs"
RESULTS = REPO / "benchmarks" / "results"
WORK = RESULTS / "work"  # prepared data, models, grids: git-ignored


def config_names() -> list[str]:
    """The model configs (each sets task.name); gan_recipes.yaml, a list of recipes, is not one."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml") if "task.name" in yaml.safe_load(p.read_text()))


def work_params(work: Path, overrides: dict[str, Any], params_file: Path | None = None) -> Params:
    """params.yaml + `overrides` (dotted keys), tracking off, every output inside `work` unless overridden."""
    return load_params(
        params_file or REPO / "params.yaml",
        {
            "tracking.enabled": False,
            "data.prepared_dir": str(work / "prepared"),
            "train.out_dir": str(work / "generator"),
            "train.checkpoint_dir": str(work / "checkpoints"),
            "train.report_dir": str(work / "train_report"),
            "evaluate.out_dir": str(work / "eval"),
            **overrides,
        },
    )


def config_params(
    name: str, work: Path, extra: dict[str, Any] | None = None, params_file: Path | None = None
) -> Params:
    """params.yaml + benchmarks/configs/<name>.yaml + `extra`, tracking off, every output inside `work`."""
    config: dict[str, Any] = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    return work_params(work, {**config, **(extra or {})}, params_file)


def describe_model(params: Params) -> str:
    g = params.model.generator
    kwargs = ", ".join(f"{k} {v}" for k, v in g.kwargs.items())
    return f"{params.task.name}, {g.name} ({kwargs}), batch {params.train.batch_size}, patch {params.train.patch_size}"


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    """Date, CPU, torch and the current load (the machine is shared, so timings carry its noise)."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['date']}, {info['cpu']}, {info['cpu_count']} CPU cores, torch {info['torch']} "
        f"({info['torch_threads']} torch threads), 1-min load average {info['load_average_1m_at_start']} at start, "
        f"{info.get('load_average_1m_at_end', '?')} at end (shared machine)"
    )


def shown_path(path: Path) -> Path:
    """`path` relative to the repository when it lies inside it (as reports show it), else as it is."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def earlier_parts(report: Path, protocol: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The parts of the JSON report a benchmark wrote earlier, or none when it is absent or was measured under
    another protocol: a run of some parts keeps the others with this."""
    if not report.is_file():
        return {}
    earlier = json.loads(report.read_text())
    return earlier.get("parts", {}) if earlier.get("protocol") == protocol else {}


def gain_cell(m: Metric, gain: dict[str, Any], baseline: str) -> str:
    """'+1.30 [+1.02, +1.58]' with a mark when the interval excludes zero (the model is better, or worse, with
    significance)."""
    values = {m.name + suffix: gain.get(f"{m.name}_vs_{baseline}{suffix}") for suffix in ("", *INTERVAL_SUFFIXES)}
    if values[m.name] is None:
        return "-"
    low, high = values[m.name + "_low"], values[m.name + "_high"]
    verdict = " (better)" if low is not None and low > 0 else " (worse)" if high is not None and high < 0 else ""
    return m.show_interval(values, signed=True) + verdict
