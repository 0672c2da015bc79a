"""What machine a benchmark ran on: platform, CPU model and count, RAM, torch, device.

    .venv/bin/python -m benchmarks.machine [--device cuda]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def describe(device: str = "cpu") -> dict[str, Any]:
    """A JSON-able description of this machine and of the torch device used."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    try:
        load = os.getloadavg()
    except (OSError, AttributeError):
        load = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": _usable_cpus(),
        "ram_gib": _ram_gib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": gpu,
        "load_avg_1_5_15": [round(v, 2) for v in load] if load else None,
        "git_commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def markdown(info: dict[str, Any]) -> str:
    """The machine as a two-column markdown table."""
    rows = [
        ("platform", f"{info['platform']}, Python {info['python']}"),
        ("CPU", f"{info['cpu_model']} ({info['cpu_count']} logical CPUs, {info['usable_cpus']} usable; "
                f"torch threads {info['torch_threads']})"),
        ("RAM", f"{info['ram_gib']} GiB"),
        ("torch", info["torch"]),
        ("device", info["device"] + (f" ({info['gpu']})" if info.get("gpu") else "")),
        ("load average (1/5/15 min) at start", " / ".join(map(str, info["load_avg_1_5_15"] or [])) or "n/a"),
        ("commit", info.get("git_commit") or "n/a"),
        ("date (UTC)", info["date"]),
    ]
    return "| machine | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    print(markdown(describe(parser.parse_args().device)))


if __name__ == "__main__":
    main()
