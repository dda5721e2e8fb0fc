"""The GPU layout of deploy/k8s/gpu, as two real processes on loopback: the Scorer alone (`start-http-server
--service-name digit_compare_scorer`) and the API alone, pointed at it with `--depends digit_compare_scorer=URL`,
exactly the commands the two Deployments run. The API's scoring must reach that Scorer: its answers are the
in-process ensemble's, the Scorer's own request counter moves with them, and without the Scorer the API refuses."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from bench.server import Server, free_port, started
from ensemble import Ensemble
from ensemble.preprocess import prepare_pair_bytes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def deployment_args(name: str) -> list[str]:
    """The container args of one Deployment of deploy/k8s/gpu."""
    for path in (ROOT / "deploy" / "k8s" / "gpu").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment" and doc["metadata"]["name"] == name:
                return doc["spec"]["template"]["spec"]["containers"][0]["args"]
    raise AssertionError(f"no Deployment {name} in deploy/k8s/gpu")


def on_loopback(args: list[str], port: int, scorer_url: str | None = None) -> list[str]:
    """The manifest's args with this test's port, and the Scorer's Service URL replaced by its loopback one."""
    args = [str(port) if i > 0 and args[i - 1] == "--port" else a for i, a in enumerate(args)]
    if scorer_url:
        args = [re.sub(r"=http://[^/]+$", f"={scorer_url}", a) if i > 0 and args[i - 1] == "--depends" else a
                for i, a in enumerate(args)]
    assert args[0] == "start-http-server"
    # What BentoML's container entrypoint runs for `start-http-server ARGS`: the module, ARGS, then the Bento
    # (here the source tree, as `bentoml build` packs it).
    return [sys.executable, "-m", "bentoml_cli._internal.start", *args, "--host", "127.0.0.1", str(ROOT)]


def scorer_requests(scorer: Server) -> float:
    """The Scorer's own count of answered /score calls (BentoML's Prometheus counter)."""
    metrics = httpx.get(f"{scorer.url}/metrics", timeout=10).text
    counts = [float(m.group(1)) for m in re.finditer(
        r'^bentoml_service_request_total\{endpoint="/score",http_response_code="200",[^}]*'
        r'service_name="digit_compare_scorer"[^}]*\} ([0-9.e+]+)$', metrics, re.M)]
    return sum(counts)


def test_the_api_scores_on_the_remote_scorer_it_is_pointed_at(tmp_path):
    env = {"DIGIT_COMPARE_LAYOUT": "scorer", "DIGIT_COMPARE_DEVICE": "cpu", "BENTOML_DO_NOT_TRACK": "true"}
    # One BentoML home each, as in two pods: a shared one would also share (and reset) Prometheus' files.
    scorer_env, api_env = ({**env, "BENTOML_HOME": str(tmp_path / name)} for name in ("scorer", "api"))
    scorer_port, api_port = free_port(), free_port()
    image = (ROOT / "samples" / "pair.png").read_bytes()
    expected = Ensemble.load(ROOT / "models", device="cpu").predict(prepare_pair_bytes(image, "image")[None])
    with tempfile.TemporaryDirectory() as logs:
        scorer_cmd = on_loopback(deployment_args("digit-compare-scorer"), scorer_port)
        with started(scorer_cmd, scorer_port, scorer_env, ready_timeout=300, log=Path(logs) / "scorer.log") as scorer:
            api_cmd = on_loopback(deployment_args("digit-compare-api"), api_port, scorer.url)
            assert f"digit_compare_scorer={scorer.url}" in api_cmd
            with started(api_cmd, api_port, api_env, ready_timeout=300, log=Path(logs) / "api.log") as api:
                before = scorer_requests(scorer)
                for _ in range(3):
                    answer = httpx.post(f"{api.url}/compare_pair", files={"image": ("pair.png", image)}, timeout=60)
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["digits"] == {"left": 7, "right": 9}
                    np.testing.assert_allclose(answer.json()["probability"], expected.probability[0], atol=1e-5)
                after = scorer_requests(scorer)
                assert after - before >= 1, (before, after)  # coalesced pairs may share a call, never none
                # The API process itself holds no models: with the Scorer gone it cannot answer.
                scorer.stop()
                gone = httpx.post(f"{api.url}/compare_pair", files={"image": ("pair.png", image)}, timeout=60)
                assert gone.status_code == 503, gone.text
                assert "loaded 10 models" not in api.log_text()
