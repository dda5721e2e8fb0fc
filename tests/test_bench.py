"""The served-product benchmark (`python -m bench.serve`) runs end to end on a tiny setting (a few requests; no timing
asserted)."""

from __future__ import annotations

import json

import pytest

from bench.serve import main as bench
from serving import settings


@pytest.mark.slow
def test_bench_runs_end_to_end_and_writes_its_report(smoke_models, tmp_path):
    out = tmp_path / "docs"
    assert bench(["--models", str(smoke_models), "--duration", "1", "--concurrency", "1,3", "--batches", "1,4",
                  "--repeats", "1", "--out", str(out), "--serve-env", "DIGIT_COMPARE_MAX_BATCH_SIZE=8"]) == 0
    report = (out / "bench.md").read_text()
    assert "## In process" in report and "## Over HTTP: `compare_pair`" in report
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "bench.json").read_text())
    assert [r["batch"] for r in result["in_process"]] == [1, 4]
    assert all(r["fp32 pairs/s"] > 0 for r in result["in_process"])
    assert [r["clients"] for r in result["compare_pair"]] == [1, 3]
    for row in [*result["compare_pair"], result["compare_batch"]]:
        assert row["answers"] > 0 and row["errors"] == 0, row
    assert all(1 <= r["max batch"] <= 8 for r in result["compare_pair"])  # the server got --serve-env
    assert result["serve_env"] == {"DIGIT_COMPARE_MAX_BATCH_SIZE": "8"}
    # Where the CPU went, per answer: the API workers (found under the serve process) and this load generator
    # worked; a scorer process exists, and worked, only in the scorer layout (the default where a GPU is).
    with_scorer = settings.load().layout == "scorer"
    for row in [*result["compare_pair"], result["compare_batch"]]:
        assert row["api cpu ms/ans"] > 0 and row["client cpu ms/ans"] > 0, row
        assert (row["scorer cpu ms/ans"] > 0) is with_scorer, row
