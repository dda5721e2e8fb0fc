"""Where a worker's memory goes, when asked: ``DIGIT_COMPARE_TRACEMALLOC=DIR`` makes each worker trace its Python
allocations and write, every ``DIGIT_COMPARE_TRACEMALLOC_EVERY_S`` seconds (60; ``serving.settings``), what grew
since its first
snapshot (taken once it has served for a while) to ``DIR/PID.txt``: the biggest growths by line, with the
process's resident memory beside the traced total, so growth outside Python's heap (malloc arenas, native
libraries) shows as the difference. ``bench/soak.py --tracemalloc DIR`` sets it. Tracing slows the worker:
it is for diagnosis, never on by default.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from pathlib import Path

from ensemble.atomic import atomic_write_text

TOP = 25


def resident_bytes(pid: int | str = "self") -> int:
    """The process's resident set size, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _report(first: tracemalloc.Snapshot, started: float) -> str:
    now = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    traced, peak = tracemalloc.get_traced_memory()
    lines = [f"pid {os.getpid()}, {time.monotonic() - started:.0f} s after the first snapshot: resident "
             f"{resident_bytes() / 2**20:.1f} MiB, traced by Python {traced / 2**20:.1f} MiB (peak {peak / 2**20:.1f})",
             f"top {TOP} growths since the first snapshot, by line:"]
    lines += [str(stat) for stat in now.compare_to(first, "lineno")[:TOP]]
    return "\n".join(lines) + "\n"


def _run(folder: Path, every_s: float, warm_s: float) -> None:
    time.sleep(warm_s)  # the models loaded, the first requests served: what is there to stay
    first = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    started = time.monotonic()
    while True:
        time.sleep(every_s)
        atomic_write_text(folder / f"{os.getpid()}.txt", _report(first, started))


def trace_if_asked(folder: Path | None, every_s: float) -> bool:
    """Start tracing and reporting every ``every_s`` seconds when ``folder`` is set; True when it is."""
    if folder is None:
        return False
    Path(folder).mkdir(parents=True, exist_ok=True)
    tracemalloc.start(1)
    threading.Thread(target=_run, args=(Path(folder), every_s, every_s), name="tracemalloc", daemon=True).start()
    return True
