"""deploy/k8s: every manifest valid against Kubernetes' own schemas (offline, kubernetes-validate), and wired the
way docs/deploy.md says: probes on BentoML's endpoints, a non-root user that is the image's, a preStop pause within
the grace period, Services and autoscalers that select what exists, the GPU layout's API pointed at its Scorer."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
LAYOUTS = ("cpu", "gpu")
# The oldest Kubernetes still widely run (autoscaling/v2, policy/v1 and the startup probe are all GA there) and
# the newest the validator knows.
VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
IMAGE_UID = 1034  # BentoML's bento user (bento__uid_gid), which deploy/bento/Dockerfile.j2 runs as


def kustomization(layout: str) -> dict:
    return yaml.safe_load((K8S / layout / "kustomization.yaml").read_text())


def resources(layout: str) -> list[dict]:
    """Every resource the layout's kustomization applies, in order."""
    docs = []
    for name in kustomization(layout)["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / layout / name).read_text()) if d]
    return docs


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def schema_errors(doc: dict) -> list[str]:
    """Why ``doc`` is not a valid resource under each Kubernetes version (strict: no unknown fields)."""
    errors = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as err:
            errors.append(f"{version}: {doc['kind']}/{doc['metadata']['name']}: {getattr(err, 'message', err)}")
    return errors


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kustomization_applies_every_manifest_of_its_folder(layout):
    listed = kustomization(layout)["resources"]
    on_disk = sorted(p.name for p in (K8S / layout).glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(layout):
    docs = resources(layout)
    assert len(docs) >= 4
    assert [e for d in docs for e in schema_errors(d)] == []


def test_a_manifest_broken_against_the_schema_fails_validation():
    """The check above can fail: a string where a port number goes, an unknown field, a missing required one."""
    deployment = find(resources("cpu"), "Deployment")
    assert schema_errors(deployment) == []
    port_as_text = copy.deepcopy(deployment)
    port_as_text["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000"
    errors = schema_errors(port_as_text)
    assert len(errors) == len(VERSIONS) and all("'3000' is not of type 'integer'" in e for e in errors), errors
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = typo["spec"]["template"]["spec"][
        "containers"][0].pop("readinessProbe")
    assert schema_errors(typo)
    no_selector = copy.deepcopy(deployment)
    del no_selector["spec"]["selector"]
    assert schema_errors(no_selector)
    service = find(resources("cpu"), "Service")
    service_port_as_text = copy.deepcopy(service)
    service_port_as_text["spec"]["ports"][0]["port"] = "eighty"
    assert schema_errors(service_port_as_text)


def container_of(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def check_pod(deployment: dict) -> None:
    """What every pod of the product must have (the issue's list), whichever layout."""
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(deployment)
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"].items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][key].keys()
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == IMAGE_UID != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The preStop pause, then SIGTERM and the service's own drain (at most 10 s), all before the kill.
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and 0 < int(pause[1]) and int(pause[1]) + 10 < pod["terminationGracePeriodSeconds"]
    # A read-only image needs a writable BentoML home: on the emptyDir.
    if container["securityContext"].get("readOnlyRootFilesystem"):
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert env_of(container)["BENTOML_HOME"].startswith("/tmp/") and "/tmp" in mounts


def check_service_and_hpa(docs: list[dict], deployment: dict, service_name: str) -> None:
    service = find(docs, "Service", service_name)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])


def test_cpu_layout():
    docs = resources("cpu")
    deployment = find(docs, "Deployment")
    check_pod(deployment)
    assert deployment["spec"]["replicas"] >= 2
    container = container_of(deployment)
    assert container["image"] == "digit-compare:latest" and "args" not in container  # the image's `bentoml serve`
    assert env_of(container)["DIGIT_COMPARE_LAYOUT"] == "in_process"
    check_service_and_hpa(docs, deployment, "digit-compare")
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def served_service_names() -> tuple[str, str]:
    """The two BentoML service names service.py declares (API, Scorer), read from its decorators."""
    names = re.findall(r'@bentoml\.service\(\s*name="([a-z_]+)"', (ROOT / "service.py").read_text())
    api = [n for n in names if not n.endswith("_scorer")]
    scorer = [n for n in names if n.endswith("_scorer")]
    assert len(api) == 1 and len(scorer) == 1, names
    return api[0], scorer[0]


def test_gpu_layout_runs_api_and_scorer_apart_and_wires_them_with_bentoml_depends():
    docs = resources("gpu")
    api_name, scorer_name = served_service_names()
    api, scorer = find(docs, "Deployment", "digit-compare-api"), find(docs, "Deployment", "digit-compare-scorer")
    for deployment in (api, scorer):
        check_pod(deployment)
        assert env_of(container_of(deployment))["DIGIT_COMPARE_LAYOUT"] == "scorer"
    # The Scorer: only its service, on one GPU; the API's image is the CPU one, with no GPU asked.
    scorer_container = container_of(scorer)
    assert scorer_container["args"][:3] == ["start-http-server", "--service-name", scorer_name]
    assert scorer_container["image"] == "digit-compare:gpu"
    assert scorer_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    api_container = container_of(api)
    assert api_container["image"] == "digit-compare:latest"
    assert "nvidia.com/gpu" not in api_container["resources"]["limits"]
    args = api_container["args"]
    assert args[:3] == ["start-http-server", "--service-name", api_name]
    # --depends NAME=URL: the Scorer's own Service, on its port
    depends = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--depends")
    scorer_service = find(docs, "Service", "digit-compare-scorer")
    assert scorer_service["spec"]["selector"] == scorer["spec"]["selector"]["matchLabels"]
    assert depends == {scorer_name: f"http://digit-compare-scorer:{scorer_service['spec']['ports'][0]['port']}"}
    # the Scorer drains after the API: a longer grace period
    assert (scorer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            > api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    check_service_and_hpa(docs, api, "digit-compare")


def test_kustomize_image_names_keep_each_deployment_tag():
    """An `images:` entry with newTag would turn the Scorer's digit-compare:gpu into the CPU image."""
    for layout in LAYOUTS:
        for entry in kustomization(layout).get("images", []):
            assert "newTag" not in entry and "digest" not in entry, (layout, entry)


def test_gpu_image_installs_the_projects_onnxruntime_pin():
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["runtime"]
    (pin,) = [p for p in runtime if p.startswith("onnxruntime-gpu==")]
    lines = [ln for ln in (ROOT / "deploy" / "gpu" / "requirements.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines[0] == pin.replace("onnxruntime-gpu", "onnxruntime-gpu[cuda,cudnn]")
    assert all(re.fullmatch(r"nvidia-[a-z0-9\-]+==[0-9.]+", ln) for ln in lines[1:]), lines


def test_the_image_user_is_the_one_the_pods_run_as():
    from bentoml._internal.container.generate import DEFAULT_BENTO_ENVS

    assert DEFAULT_BENTO_ENVS["uid_gid"] == IMAGE_UID
    template = (ROOT / "deploy" / "bento" / "Dockerfile.j2").read_text()
    assert "USER {{ bento__uid_gid }}:{{ bento__uid_gid }}" in template
    assert "USER 1034:1034" in (ROOT / "deploy" / "gpu" / "Containerfile").read_text()
