"""bentofile.yaml's Python packages are pyproject.toml's core dependencies plus its run-time group, pin for pin:
the Bento must run on exactly what the tests run on (and never on torch)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _bentofile() -> dict:
    return yaml.safe_load((ROOT / "bentofile.yaml").read_text())


def expected_bento_packages(pyproject: dict) -> list[str]:
    """What bentofile.yaml's python.packages must be: the core dependencies (numpy), then the runtime group."""
    project = pyproject["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["runtime"]]


def pin_mismatches(pyproject: dict, bentofile: dict) -> list[str]:
    """Every way bentofile's packages differ from pyproject's core + runtime pins (empty when they agree)."""
    expected = expected_bento_packages(pyproject)
    actual = list(bentofile["python"]["packages"])
    problems = [f"bentofile.yaml lacks {p!r}" for p in expected if p not in actual]
    problems += [f"bentofile.yaml has {p!r}, not in pyproject's core + runtime" for p in actual if p not in expected]
    if not problems and actual != expected:
        problems.append(f"bentofile.yaml lists them in another order: {actual} (pyproject: {expected})")
    return problems


def test_bentofile_packages_are_the_core_and_runtime_pins():
    pyproject, bentofile = _pyproject(), _bentofile()
    assert pin_mismatches(pyproject, bentofile) == []
    packages = bentofile["python"]["packages"]
    assert packages[0].startswith("numpy==") and len(packages) >= 2
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.+\-]*", p) for p in packages), packages  # exact pins
    assert not any(p.split("==")[0] == "torch" for p in packages)


def test_a_drifted_pin_is_caught():
    """The check above fails when one pin drifts, one package goes missing, or one is added."""
    pyproject, bentofile = _pyproject(), _bentofile()
    runtime = pyproject["project"]["optional-dependencies"]["runtime"]
    name, version = runtime[1].split("==")
    drifted = {"python": {"packages": [p if p != runtime[1] else f"{name}=={version}.1"
                                       for p in bentofile["python"]["packages"]]}}
    assert pin_mismatches(pyproject, drifted) == [f"bentofile.yaml lacks {runtime[1]!r}",
                                                  f"bentofile.yaml has '{name}=={version}.1', not in pyproject's "
                                                  "core + runtime"]
    core_drifted = {"project": {**pyproject["project"], "dependencies": ["numpy==1.0.0"]}}
    assert pin_mismatches(core_drifted, bentofile)
    missing = {"python": {"packages": bentofile["python"]["packages"][:-1]}}
    assert pin_mismatches(pyproject, missing)
    extra = {"python": {"packages": [*bentofile["python"]["packages"], "torch==2.13.0"]}}
    assert pin_mismatches(pyproject, extra)
