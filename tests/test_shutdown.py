"""Graceful shutdown of a real ``bentoml serve`` under load, in both layouts: what a rolling update does.

SIGTERM goes to the ``bentoml serve`` process (as an orchestrator sends it to a container's first process)
while 16 closed-loop clients post ``compare_pair``. Every request sent before the signal must get its 200;
requests sent after it may find the door shut (a refused or reset connection) but never get a 5xx; the whole
server exits (how fast is measured on a quiet machine, docs/testing.md; here only a hang fails).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.drain import ANSWERED_BEFORE_SIGNAL, EXIT_HANG_S, ClosedLoop, assert_drained
from tests.server_process import free_port

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _start(layout: str, tmp: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(tmp / "home"),
           "DIGIT_COMPARE_DEVICE": "cpu", "DIGIT_COMPARE_LAYOUT": layout}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "service:DigitCompare", "--host",
                                    "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url, log
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"not ready:\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("layout", ["in_process", "scorer"])
def test_sigterm_under_load_finishes_every_accepted_request_and_exits(layout):
    with tempfile.TemporaryDirectory(prefix="digit-compare-shutdown-") as tmp:
        process, url, log = _start(layout, Path(tmp))
        try:
            with ClosedLoop(url) as load:
                load.wait_answered(ANSWERED_BEFORE_SIGNAL)
                signalled = time.monotonic()
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(EXIT_HANG_S)
                except subprocess.TimeoutExpired:
                    pass
                exited = time.monotonic() - signalled if process.poll() is not None else float("inf")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        text = log.read_text(errors="replace")
    assert_drained(load.outcomes, signalled, exited, text, f"bentoml serve ({layout})")
