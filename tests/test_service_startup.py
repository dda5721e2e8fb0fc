"""A refused model stops `bentoml serve` at once, non-zero, with a message naming the file.

It used to fail each worker's start instead, which BentoML's process manager restarted every ~10 s,
forever (61 restarts in 10 minutes), while the server never became ready.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ensemble.runtime import gpu_usable
from tests.server_process import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _serving_copy(tmp_path: Path) -> Path:
    """What the Bento ships from models/: the manifest, the fused graph(s) and the stackers."""
    models = tmp_path / "models"
    models.mkdir()
    for path in (ROOT / "models").iterdir():
        if path.name == "manifest.json" or path.suffix == ".onnx" or path.name.startswith("stacker_"):
            shutil.copy2(path, models / path.name)
    return models


def _serve(models: Path, tmp_path: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           "DIGIT_COMPARE_MODELS": str(models), "DIGIT_COMPARE_DEVICE": "cpu", **extra_env}
    command = [sys.executable, "-m", "bentoml", "serve", "service:DigitCompare", "--host", "127.0.0.1",
               "--port", str(free_port())]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:  # still running: it is restarting its workers
        os.killpg(process.pid, signal.SIGKILL)  # its whole session: the CLI, the arbiter's workers
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"bentoml serve did not exit within 90 s:\n{output[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output, "")


@pytest.mark.parametrize("damage", ["tampered", "missing"])
def test_refused_model_makes_serve_exit_naming_the_file(tmp_path, damage):
    models = _serving_copy(tmp_path)
    target = models / "stacker_logreg.json"
    if damage == "tampered":
        target.write_text(target.read_text().replace("0", "1", 1))
    else:
        target.unlink()
    done = _serve(models, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert str(target) in output, output[-3000:]
    assert ("does not match the manifest" if damage == "tampered" else "missing") in output
    assert output.count("Traceback") == 0, output[-3000:]  # a message, not a crash dump


@pytest.mark.skipif(gpu_usable(), reason="a usable GPU is present: forcing CUDA is no mistake here")
@pytest.mark.parametrize("layout", ["scorer", "auto"])
def test_forced_cuda_without_a_gpu_makes_serve_exit_saying_so(tmp_path, layout):
    """Not a Scorer worker that fails its start and is restarted forever: `bentoml serve` itself exits."""
    done = _serve(_serving_copy(tmp_path), tmp_path, DIGIT_COMPARE_DEVICE="cuda", DIGIT_COMPARE_LAYOUT=layout)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "DIGIT_COMPARE_DEVICE=cuda, but no usable GPU" in output, output[-3000:]
    assert output.count("Traceback") == 0, output[-3000:]


@pytest.mark.parametrize("variable, value, message", [
    ("DIGIT_COMPARE_WORKER", "1", "unknown setting DIGIT_COMPARE_WORKER; did you mean DIGIT_COMPARE_WORKERS?"),
    ("DIGIT_COMPARE_MAX_PAIRS", "many", "DIGIT_COMPARE_MAX_PAIRS: "),  # named; the why is pydantic's wording
])
def test_a_misspelt_or_bad_setting_makes_serve_exit_naming_it(tmp_path, variable, value, message):
    """A misspelt variable would otherwise be ignored, silently: the service would run with the default."""
    done = _serve(_serving_copy(tmp_path), tmp_path, **{variable: value})
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
    assert output.count("Traceback") == 0, output[-3000:]
