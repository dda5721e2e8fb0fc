"""Start `bentoml serve` in a subprocess on a free loopback port, wait until ready, always stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


@contextlib.contextmanager
def bentoml_serve(target: str, cwd: Path, env: dict[str, str], ready_timeout: float = 180) -> Iterator[Server]:
    """``bentoml serve TARGET`` on 127.0.0.1 and a free port; yields once /readyz answers 200."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="digit-compare-serve-") as tmp:
        log = Path(tmp) / "serve.log"
        command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=cwd, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env},
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(process, f"http://127.0.0.1:{port}", log)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if not server.alive():
                    pytest.fail(f"bentoml serve exited with {process.returncode}:\n{server.log_text()[-5000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready after {ready_timeout:.0f} s:\n{server.log_text()[-5000:]}")
                time.sleep(0.5)
            yield server
        finally:
            if server.alive():
                os.killpg(process.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)


ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serve_repository(bentoml_home: Path, **env: str) -> Iterator[Server]:
    """This checkout's ``service:DigitCompare`` on the CPU, with a private BentoML home (never the
    user's bento store) and any extra environment the test needs."""
    with bentoml_serve("service:DigitCompare", ROOT, {"BENTOML_HOME": str(bentoml_home), "DIGIT_COMPARE_DEVICE": "cpu",
                                                      **env}) as server:
        yield server
