"""The one launcher of a real server: ``bentoml serve`` (or any command that answers ``/readyz``) in its own process
group on a free loopback port, waited for until ready, always stopped. The benchmarks and the tests use it alike.

Also what the measuring tools read of a running server from ``/proc``: its process tree, each process's role (the
API workers, the scorer, the process manager), CPU seconds and resident memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ensemble.runtime import MODELS_ENV

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "service:DigitCompare"


class ServerFailed(RuntimeError):
    """The server exited, or did not answer ``/readyz``, before it was ready (the message ends with its log)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(url: str) -> bool:
    """Whether ``url/readyz`` answers 200 now."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


class Server:
    """A started server: its process (the leader of its own process group), URL and log file."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM to the whole process group (workers included), SIGKILL after 30 s."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@contextlib.contextmanager
def started(command: list[str], port: int, env: dict[str, str] | None = None, cwd: Path = ROOT,
            ready_timeout: float = 180, log: Path | None = None) -> Iterator[Server]:
    """Run ``command`` (which listens on 127.0.0.1:``port``) until the block ends; yields once ``/readyz`` answers
    200. Raises ``ServerFailed`` with the tail of its log when it exits or is not ready in ``ready_timeout`` s."""
    with contextlib.ExitStack() as stack:
        if log is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="digit-compare-serve-"))) / "serve.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(process, f"http://127.0.0.1:{port}", log)
        try:
            deadline = time.monotonic() + ready_timeout
            while not ready(server.url):
                if not server.alive():
                    raise ServerFailed(f"{' '.join(command[:6])} exited with {process.returncode}:\n"
                                       f"{server.log_text()[-5000:]}")
                if time.monotonic() > deadline:
                    raise ServerFailed(f"not ready after {ready_timeout:.0f} s:\n{server.log_text()[-5000:]}")
                time.sleep(0.3)
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def bentoml_serve(target: str = SERVICE, cwd: Path = ROOT, env: dict[str, str] | None = None,
                  ready_timeout: float = 180) -> Iterator[Server]:
    """``bentoml serve TARGET`` (this checkout's service, or a built Bento's tag) on 127.0.0.1 and a free port."""
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    with started(command, port, {"BENTOML_DO_NOT_TRACK": "true", **(env or {})}, cwd, ready_timeout) as server:
        yield server


def serve_models(models: Path, env: dict[str, str] | None = None, ready_timeout: float = 180
                 ) -> contextlib.AbstractContextManager[Server]:
    """This checkout's service on the models folder ``models``, with any extra environment."""
    return bentoml_serve(SERVICE, ROOT, {MODELS_ENV: str(Path(models).resolve()), **(env or {})}, ready_timeout)


# --------------------------------------------------------------------------- the server's processes, from /proc


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(root: int) -> dict[int, str]:
    """``root`` and all its descendants: pid -> command line."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    tree, grown = {root}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grown = bool(children)
    return {pid: commands[pid] for pid in tree if pid in commands}


def role(command: str) -> str:
    """What a process of the server does: ``scorer``, ``api`` (a worker of the public service) or ``serve``."""
    if "digit_compare_scorer" in command:
        return "scorer"
    return "api" if "_bentoml_impl.worker" in command else "serve"


def worker_pids(root: int) -> dict[int, str]:
    """The server's worker processes (API workers, the scorer where the layout has one): pid -> role."""
    return {pid: role(command) for pid, command in process_tree(root).items() if role(command) in ("api", "scorer")}


def api_worker_pid(root: int) -> int:
    """One API worker of the server started as ``root``."""
    pids = [pid for pid, what in worker_pids(root).items() if what == "api"]
    if not pids:
        raise LookupError(f"no API worker under process {root}")
    return min(pids)


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) ``pid`` has used so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(root: int | None) -> dict[str, float]:
    """CPU seconds used so far by each role of the server's processes (nothing for a server not started here)."""
    if root is None:
        return {}
    seconds: dict[str, float] = {}
    for pid, command in process_tree(root).items():
        with contextlib.suppress(OSError):
            seconds[role(command)] = seconds.get(role(command), 0.0) + cpu_seconds(pid)
    return seconds


def server_processes(root: int) -> dict[int, str]:
    """The server's own processes (not a shell or anything else it started): pid -> "ROLE PID"."""
    return {pid: f"{role(command)} {pid}" for pid, command in process_tree(root).items()
            if "bentoml" in command or "_bentoml_impl" in command or "circus" in command}

