"""Graceful shutdown of a real ``bentoml serve`` under load, in both layouts: what a rolling update does.

SIGTERM goes to the ``bentoml serve`` process (as an orchestrator sends it to a container's first process)
while 16 closed-loop clients post ``compare_pair``. Every request sent before the signal must get its 200;
requests sent after it may find the door shut (a refused or reset connection) but never get a 5xx; the whole
server exits within 10 s.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server_process import free_port

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 16
EXIT_WITHIN_S = 10.0

pytestmark = pytest.mark.slow


def _png(pair: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pair).save(buffer, format="PNG")
    return buffer.getvalue()


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
def test_sigterm_under_load_finishes_every_accepted_request_and_exits_in_time(layout):
    rng = np.random.default_rng(3)
    images = [_png(np.where(rng.random((28, 56)) < 0.8, 0, rng.integers(0, 256, (28, 56))).astype(np.uint8))
              for _ in range(CLIENTS)]
    outcomes: list[tuple[float, str]] = []  # (when the request was sent, its status or the transport error)
    lock = threading.Lock()
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="digit-compare-shutdown-") as tmp:
        process, url, log = _start(layout, Path(tmp))
        try:
            def client_loop(index: int) -> None:
                with httpx.Client(base_url=url, timeout=30) as client:
                    while not stop.is_set():
                        sent = time.monotonic()
                        try:
                            status = str(client.post("/compare_pair",
                                                     files={"image": ("p.png", images[index])}).status_code)
                        except httpx.TransportError as err:
                            status = type(err).__name__
                        with lock:
                            outcomes.append((sent, status))
                        if not status.isdigit():
                            time.sleep(0.05)  # the door is shut: do not spin

            threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(CLIENTS)]
            for thread in threads:
                thread.start()
            time.sleep(4.0)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(EXIT_WITHIN_S + 20)
            except subprocess.TimeoutExpired:
                pass
            exited = time.monotonic() - signalled if process.poll() is not None else float("inf")
            stop.set()
            for thread in threads:
                thread.join(40)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        text = log.read_text(errors="replace")
    before = [status for sent, status in outcomes if sent < signalled]
    after = [status for sent, status in outcomes if sent >= signalled]
    print(f"\n{layout}: {len(before)} requests before SIGTERM, {len(after)} after; exited in {exited:.1f} s; "
          f"after: { {s: after.count(s) for s in set(after)} }")
    assert len(before) > 50, "the load did not get going"
    failed_before = {s: before.count(s) for s in set(before) if s != "200"}
    assert not failed_before, f"requests sent before the signal got {failed_before}:\n{text[-3000:]}"
    assert not [s for s in after if s.startswith("5")], {s: after.count(s) for s in set(after)}
    assert exited <= EXIT_WITHIN_S, f"the server took {exited:.1f} s to exit:\n{text[-3000:]}"
