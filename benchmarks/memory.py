"""This process's memory from ``/proc/self/status`` (Linux), with ``getrusage``'s peak elsewhere."""
from __future__ import annotations

import resource
import sys
from pathlib import Path


def status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since start or the last :func:`reset_peak`) in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_peak() -> None:
    """Reset the kernel's RSS high-water mark of this process (Linux; harmless elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
