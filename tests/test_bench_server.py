"""The one launcher of a server (``bench.server``), which the benchmarks and the tests share: it yields once
``/readyz`` answers 200, stops the whole process group afterwards, and a server that dies before it is ready is an
error that carries its log."""

from __future__ import annotations

import sys

import pytest

from bench.server import ServerFailed, free_port, process_tree, ready, started


def test_a_server_is_yielded_once_ready_and_stopped_with_its_children(tmp_path):
    (tmp_path / "readyz").write_text("ok")  # http.server answers GET /readyz with this file: 200
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with started(command, port, ready_timeout=60) as server:
        assert ready(server.url) and server.alive()
        assert server.pid in process_tree(server.pid)
    assert not server.alive() and not ready(server.url)


def test_a_server_that_exits_before_it_is_ready_fails_with_its_log():
    command = [sys.executable, "-c", "print('the models folder is missing'); raise SystemExit(3)"]
    with pytest.raises(ServerFailed, match=r"exited with 3:\n(.|\n)*the models folder is missing"):
        with started(command, free_port(), ready_timeout=60):
            pass  # never reached
