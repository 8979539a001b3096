"""Stopping node processes started outside the supervisor (benchmarks, tests)."""
from __future__ import annotations

import subprocess
from typing import Iterable


def stop_processes(processes: Iterable[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM every process first (so they shut down together), then SIGKILL the stragglers."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
