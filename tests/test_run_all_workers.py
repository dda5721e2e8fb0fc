"""`python -m training.run_all --jobs 2` never leaves its worker processes behind.

Killed by SIGTERM, it stops its workers before exiting; killed by SIGKILL (nothing of it runs again),
the workers end themselves. Before, both left two workers training for as long as their models took
(hours at the default profile). The run uses the default profile on the tiny dataset so that the
workers are busy for minutes: a worker still there a few seconds after the kill is an orphan, not one
about to finish.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` that are multiprocessing spawn workers (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, ...
            cmdline = (entry / "cmdline").read_bytes()
            if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan is reaped by whoever adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_run_all_leaves_no_worker(tiny_data, tmp_path, sig):
    command = [sys.executable, "-m", "training.run_all", "--profile", "default", "--models", "resnet,fpn",
               "--jobs", "2", "--device", "cpu", "--data", str(tiny_data), "--out", str(tmp_path / "out"),
               "--skip-export"]
    log = tmp_path / "run_all.log"
    with log.open("wb") as out:
        # Its own session, so that whatever happens the finally below can remove the whole group.
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while len(workers) < 2:
            assert process.poll() is None, f"run_all ended early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no two workers after 180 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
            workers = _children(process.pid)
        # Each worker names its model once training starts, after its initializer armed the death signal and
        # started the watchdog: the kill below finds both armed.
        while not all(name in log.read_text(errors="replace") for name in ("resnet", "fpn")):
            assert process.poll() is None, f"run_all ended early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the models did not start within 180 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert all(_alive(w) for w in workers)

        os.kill(process.pid, sig)
        process.wait(timeout=30)
        if sig == signal.SIGTERM:
            assert process.returncode != 0  # an interrupted run does not report success

        deadline = time.monotonic() + 5
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        orphans = [w for w in workers if _alive(w)]
        assert not orphans, f"worker(s) {orphans} still running 5 s after run_all got {sig.name}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
