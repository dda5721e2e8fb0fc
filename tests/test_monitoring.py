"""What the service records of its answers (serving/model_metrics.py) and the reference it is compared with
(ensemble/reference.py), in process: the statistics mean what docs/monitoring.md says, the served rows give the same
numbers as the models' own prediction, each refused request counts once with its reason, the reference block reads
from the committed manifest and from manifests without it, and ``python -m ensemble reference`` writes it."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from ensemble import Ensemble
from ensemble.course_data import load_course_npz
from ensemble.manifest import ManifestError, read_manifest
from ensemble.reference import REFERENCE_KEY, answer_statistics, read_reference
from serving.guard import FrontDoor, RouteRule
from serving.inputs import error_response
from serving.model_metrics import Instruments, ModelMetrics, RefusalCounter, note_refusal
from serving.scoring import row_statistics, score_rows
from tests.test_deploy_manifests import resources

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SAMPLES = ROOT / "samples"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- the statistics


def test_statistics_are_confidence_top_digit_and_the_share_voting_against():
    digits = np.full((2, 2, 10), 0.02)
    digits[0, 0, 7], digits[0, 1, 3] = 0.82, 0.5
    digits[1, :, 1] = 0.82
    stats = answer_statistics(np.array([0.2, 0.9]), np.array([[0.9, 0.1, 0.3, 0.4], [0.6, 0.7, 0.1, 0.5]]), digits)
    np.testing.assert_allclose(stats.confidence, [0.8, 0.9])
    np.testing.assert_allclose(stats.top_digit, [[0.82, 0.5], [0.82, 0.82]])
    # answer 0 says "not greater": one model of four votes greater; answer 1 says greater: one votes not
    np.testing.assert_allclose(stats.disagreement, [0.25, 0.25])
    assert stats.against.tolist() == [[True, False, False, False], [False, False, True, False]]


def test_the_served_rows_give_the_statistics_of_the_models_own_prediction():
    """serving.scoring's columns are sliced right: the score rows (what both layouts answer from) give the same
    statistics as the prediction the reference is computed from, under each prior."""
    ens = Ensemble.load(MODELS, device="cpu")
    x = load_course_npz(SAMPLES / "batch.npz").x
    prediction = ens.predict(x)
    rows = score_rows(prediction, len(x))
    for prior in ("course", "uniform"):
        served = row_statistics(rows, prior, len(ens.names))
        direct = answer_statistics(prediction.by_prior[prior], prediction.base_by_prior[prior],
                                   prediction.digit_probs.mean(axis=1))
        for field in ("confidence", "top_digit", "disagreement", "against"):
            np.testing.assert_allclose(getattr(served, field), getattr(direct, field), err_msg=f"{prior} {field}")
        one = row_statistics(rows[3], prior, len(ens.names))  # a single answer's row
        np.testing.assert_allclose(one.confidence, direct.confidence[3:4])


# --------------------------------------------------------------------------- recording


def test_answers_are_recorded_per_route_and_prior_with_each_model_that_voted_against():
    registry = CollectorRegistry()
    reference = read_reference(read_manifest(MODELS))
    metrics = ModelMetrics(("a", "b", "c", "d"), reference, Instruments(registry))
    digits = np.full((2, 2, 10), 0.1)
    stats = answer_statistics(np.array([0.2, 0.97]), np.array([[0.9, 0.1, 0.3, 0.4], [0.6, 0.7, 0.1, 0.5]]), digits)
    metrics.record("/compare_pair", "course", stats)
    metrics.record_batch("uniform", stats)
    assert sample(registry, "digit_compare_answers_total", route="/compare_pair", prior="course") == 2
    assert sample(registry, "digit_compare_answers_total", route="/compare_batch", prior="uniform") == 2
    assert sample(registry, "digit_compare_confidence_count", route="/compare_pair", prior="course") == 2
    assert sample(registry, "digit_compare_confidence_bucket", route="/compare_pair", prior="course", le="0.8") == 1
    assert sample(registry, "digit_compare_confidence_sum", route="/compare_pair", prior="course") == \
        pytest.approx(0.8 + 0.97)
    assert sample(registry, "digit_compare_top_digit_probability_count", route="/compare_pair", half="right") == 2
    assert sample(registry, "digit_compare_disagreement_bucket", route="/compare_pair", prior="course",
                  le="0.2") == 0
    assert sample(registry, "digit_compare_disagreement_bucket", route="/compare_pair", prior="course",
                  le="0.3") == 2
    assert sample(registry, "digit_compare_model_dissent_total", prior="course", model="a") == 1
    assert sample(registry, "digit_compare_model_dissent_total", prior="course", model="c") == 1
    assert sample(registry, "digit_compare_model_dissent_total", prior="course", model="b") == 0
    assert sample(registry, "digit_compare_batch_pairs_count") == 1
    assert sample(registry, "digit_compare_batch_pairs_sum") == 2
    # the reference, from the committed manifest
    assert sample(registry, "digit_compare_reference_confidence_mean", prior="course") == \
        reference["priors"]["course"]["confidence"]["mean"]
    assert sample(registry, "digit_compare_reference_top_digit_probability_mean", half="left") == \
        reference["top_digit_probability"]["left"]["mean"]


# --------------------------------------------------------------------------- refusals, through the front door


def _door(app, registry: CollectorRegistry) -> FrontDoor:
    instruments = Instruments(registry)
    rules = {"/compare_pair": RouteRule(("POST",), {"application/json": 1024}), "/info": RouteRule(("GET",))}
    return FrontDoor(app, rules, openapi=dict, body_idle_timeout=5, body_timeout=5,
                     refusals=RefusalCounter(["/compare_pair"], lambda: instruments))


def _request(door: FrontDoor, path: str, body: bytes = b"{}", content_type: bytes = b"application/json",
             method: str = "POST") -> int:
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-type", content_type)]}
    asyncio.run(door(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_each_refused_request_counts_once_with_the_reason_the_refusing_code_gave():
    registry = CollectorRegistry()

    async def app(scope, receive, send):  # a route that refuses a blank picture, as serving.app's do
        if (await receive())["body"] == b"blank":
            note_refusal("blank")
            note_refusal("not_a_picture")  # only the first reason counts: one refusal per request
            await error_response("blank", 400)(scope, receive, send)
        else:
            await error_response("fine", 200)(scope, receive, send)

    door = _door(app, registry)
    assert _request(door, "/compare_pair", b"blank") == 400
    assert _request(door, "/compare_pair", b"ok") == 200
    assert _request(door, "/compare_pair", content_type=b"text/plain") == 415  # the door's own refusal
    assert _request(door, "/compare_pair", method="PUT") == 405
    assert _request(door, "/nowhere/" + "x" * 40, content_type=b"text/plain") == 415  # not an answering route
    refused = {reason: sample(registry, "digit_compare_refused_total", route="/compare_pair", reason=reason)
               for reason in ("blank", "not_a_picture", "content_type", "method")}
    assert refused == {"blank": 1, "not_a_picture": 0, "content_type": 1, "method": 1}
    total = sum(s.value for m in registry.collect() if m.name == "digit_compare_refused" for s in m.samples
                if s.name.endswith("_total"))
    assert total == 3


# --------------------------------------------------------------------------- the reference block


def test_the_committed_manifest_has_the_reference_of_both_served_models():
    manifest = read_manifest(MODELS)
    for model in ("ensemble", "student"):
        stats = read_reference(manifest, model)
        assert stats is not None, model
        course = stats["priors"]["course"]
        assert 0.5 <= course["confidence"]["p05"] <= course["confidence"]["p50"] <= 1
        assert 0.5 <= course["confidence"]["mean"] <= 1
        assert 0 <= course["disagreement"]["mean"] <= 1
    assert manifest[REFERENCE_KEY]["pairs"] == 10_000  # the course's val.npz


def test_a_manifest_without_the_reference_still_loads_and_a_malformed_one_is_refused(tmp_path):
    manifest = read_manifest(MODELS)
    old = {k: v for k, v in manifest.items() if k != REFERENCE_KEY}
    assert read_reference(old) is None
    assert read_reference(manifest, "no_such_model") is None
    broken = {**manifest, REFERENCE_KEY: {"models": {"ensemble": {"priors": {}}}}}
    with pytest.raises(ManifestError, match="malformed 'reference'"):
        read_reference(broken)


def test_the_reference_command_adds_the_block_and_changes_nothing_else(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    manifest = read_manifest(MODELS)
    for role in ("fused", "lightgbm", "logreg", "student", "student_int8"):  # what the ensemble and student open
        if role in manifest["artifacts"]:
            shutil.copy(MODELS / manifest["artifacts"][role]["file"], models / manifest["artifacts"][role]["file"])
    without = {k: v for k, v in manifest.items() if k != REFERENCE_KEY}
    (models / "manifest.json").write_text(json.dumps(without))
    from ensemble.__main__ import main

    assert main(["--models", str(models), "reference", str(SAMPLES / "batch.npz")]) == 0
    written = read_manifest(models)
    assert {k: v for k, v in written.items() if k != REFERENCE_KEY} == without
    block = written[REFERENCE_KEY]
    assert block["pairs"] == len(load_course_npz(SAMPLES / "batch.npz").x)
    assert set(block["models"]) == {"ensemble", "student"}
    assert read_reference(written, "student") is not None
    assert not [p.name for p in models.iterdir() if p.name.startswith(".")]  # no temporary file left behind


# --------------------------------------------------------------------------- the scrape, on Kubernetes


@pytest.mark.parametrize("layout", ["cpu", "gpu"])
def test_every_pod_that_answers_is_scraped_on_its_metrics_port(layout):
    """deploy/k8s's pods ask to be scraped (prometheus.io/* annotations) on a port they serve, and the example
    Prometheus configuration (deploy/monitoring/prometheus.yml) keeps them."""
    config = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheus.yml").read_text())
    relabel = config["scrape_configs"][0]["relabel_configs"]
    app_label = ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    kept_apps = next(r["regex"] for r in relabel if r["source_labels"] == app_label)
    deployments = [d for d in resources(layout) if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        template = deployment["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        name = deployment["metadata"]["name"]
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/path") == "/metrics", name
        ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert int(annotations["prometheus.io/port"]) in ports, name
        assert re.fullmatch(kept_apps, template["metadata"]["labels"]["app.kubernetes.io/name"]), name


@pytest.mark.slow
def test_the_stacking_step_records_the_reference_on_the_pairs_it_was_given(smoke_models, tiny_data):
    """`python -m training.run_all` (the smoke profile, no --score): the reference is taken on the built val.npz."""
    manifest = read_manifest(smoke_models)
    assert manifest[REFERENCE_KEY]["source"] == (tiny_data / "val.npz").as_posix()
    assert manifest[REFERENCE_KEY]["pairs"] == len(load_course_npz(tiny_data / "val.npz").x)
    assert read_reference(manifest) is not None
