"""`bentoml build` packages exactly what serving needs, and the built Bento serves correct answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from ensemble import Ensemble
from ensemble.course_data import load_course_npz
from serving.webui import UI_FILES
from tests.server_process import bentoml_serve
from tests.test_architecture import imported_packages

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bento_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("bentoml_home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return home


def built_bento_dir(home: Path) -> Path:
    versions = [p for p in (home / "bentos" / "digit_compare").iterdir() if p.is_dir()]
    assert len(versions) == 1
    return versions[0]


def test_bento_holds_only_what_serving_needs(bento_home):
    src = built_bento_dir(bento_home) / "src"
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    assert "service.py" in files and "ensemble/runtime.py" in files
    assert {"serving/__init__.py", "serving/guard.py", "serving/inputs.py", "serving/openapi.py",
            "serving/webui.py"} <= set(files)  # the HTTP layer beside service.py
    # From models/: the manifest and the serving graphs and stackers it lists, no weights, histories or figures.
    serving_roles = ("fused", "fused_int8", "lightgbm", "logreg", "student", "student_int8")
    listed = json.loads((ROOT / "models" / "manifest.json").read_text())["artifacts"]
    assert {"fused", "lightgbm", "logreg", "student"} <= listed.keys()  # the committed ensemble and its student
    assert sorted(f for f in files if f.startswith("models/")) == sorted(
        ["models/manifest.json"] + [f"models/{listed[role]['file']}" for role in serving_roles if role in listed])
    assert not any(f.startswith(("training/", "export/", "tests/")) for f in files)
    # No measuring tool, experiment or maintenance tool ships: the Bento is the product.
    assert not any(f.startswith(("bench/", "experiments/", "tools/")) for f in files), files
    assert not [f for f in files if f.endswith(".py") and "bench" in Path(f).stem], files
    imported = {f: imported_packages(src / f) & {"bench", "experiments", "tools", "tests"}
                for f in files if f.endswith(".py")}
    assert not {f: names for f, names in imported.items() if names}  # and nothing shipped needs them
    # the web page (plain files, no build step) and the sample pairs it offers; nothing else from samples/
    assert sorted(f for f in files if f.startswith("ui/")) == sorted(f"ui/{name}" for name, _ in UI_FILES.values())
    assert sorted(f for f in files if f.startswith("samples/")) == [
        "samples/batch.npz", "samples/expected.json", "samples/pair.png"]
    requirements = (built_bento_dir(bento_home) / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime-gpu" in requirements and "lightgbm" in requirements
    assert "torch" not in requirements


def test_built_bento_serves(bento_home):
    pairs = load_course_npz(ROOT / "samples" / "batch.npz")
    expected = Ensemble.load(ROOT / "models", device="cpu").predict(pairs.x)
    env = {"BENTOML_HOME": str(bento_home), "DIGIT_COMPARE_DEVICE": "cpu"}
    # Served from an empty folder: everything must come from the Bento itself.
    empty = bento_home / "cwd"
    empty.mkdir()
    with bentoml_serve("digit_compare:latest", empty, env) as server:
        response = httpx.post(f"{server.url}/compare_batch", json={"pairs": pairs.x.tolist()}, timeout=120)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["probabilities"], expected.probability, atol=1e-5)
        info = httpx.get(f"{server.url}/info", timeout=30).json()
        manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
        assert info["artifacts"]["fused"]["sha256"] == manifest["artifacts"]["fused"]["sha256"]
        # the web page, from the Bento's own copy of ui/ and samples/
        for path, (name, _) in UI_FILES.items():
            page = httpx.get(f"{server.url}{path}", timeout=30)
            assert page.status_code == 200 and page.content == (ROOT / "ui" / name).read_bytes(), path
        samples = httpx.get(f"{server.url}/ui/samples.json", timeout=30).json()["pairs"]
        assert [p["id"] for p in samples] == ["pair.png", *load_course_npz(ROOT / "samples" / "batch.npz").ids]
