"""The machine a benchmark ran on, in one line (printed beside every benchmark's numbers)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def describe() -> str:
    """``"<cores> cores of <CPU model>, torch <version> (<threads> threads), load average <1 min>"``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{cores} cores of {cpu}, torch {torch.__version__} ({torch.get_num_threads()} threads){load}"
