"""`python -m bench.graph_cost`: the fused graphs of model folders timed side by side (no timing asserted)."""

from __future__ import annotations

import shutil

from bench.graph_cost import main, measure


def test_every_folder_is_timed_at_every_batch(smoke_models, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(smoke_models, other)
    rows = measure([smoke_models, other], (1, 4), repeats=2, threads=1)
    assert [(r["folder"], r["batch"]) for r in rows] == [
        (str(smoke_models), 1), (str(other), 1), (str(smoke_models), 4), (str(other), 4)]
    assert all(r["wall_ms_per_pair"] > 0 and r["cpu_ms_per_pair"] >= 0 for r in rows)


def test_a_changed_graph_or_a_folder_without_a_manifest_is_refused_by_name(smoke_models, tmp_path, capsys):
    changed = tmp_path / "changed"
    shutil.copytree(smoke_models, changed)
    graph = changed / "ensemble.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    assert main([str(smoke_models), str(changed), "--repeats", "1", "--batches", "1"]) == 2
    assert str(graph) in capsys.readouterr().err

    assert main([str(tmp_path / "nowhere"), "--repeats", "1"]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
