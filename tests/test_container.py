"""The container image, built by `make image` and run by a real engine (podman here, docker where its daemon
answers): it builds (the base image cached between runs), stays lean, is ready within 10 s, answers the README's
examples as the in-process ensemble does, runs as a non-root user, refuses a tampered model by exiting non-zero
with the file named, drains under load on SIGTERM, and runs as deploy/k8s/cpu says under `podman kube play`.

`make test-container` runs these (marked `container`, so `make test` leaves them out); they skip, saying why, only
where no container engine can run. Containers are reached only through ports published on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from ensemble import Ensemble
from ensemble.contract import join_pair
from ensemble.course_data import load_course_npz
from ensemble.preprocess import prepare_digit_bytes, prepare_pair_bytes
from tests.drain import ANSWERED_BEFORE_SIGNAL, EXIT_HANG_S, ClosedLoop, assert_drained
from tests.server_process import free_port
from tools.doc_examples import differences, find_sections, select

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
TAG = "digit-compare:test"  # never the user's digit-compare:latest
GPU_TAG = "digit-compare:test-gpu"
IMAGE_UID = 1034
READY_WITHIN_S = 10.0
MAX_IMAGE_BYTES = 1.2e9

pytestmark = [pytest.mark.container, pytest.mark.slow]


def _engine_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def _find_engine() -> tuple[str | None, str]:
    """docker where its daemon answers, else podman where it can run a container; else why neither."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker", ""
    if not shutil.which("podman"):
        return None, "no container engine: neither a docker daemon nor podman (make container-tools installs podman)"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, env=_engine_env())
    if info.returncode != 0:
        return None, f"podman cannot run here: {info.stderr.strip()[-300:]}"
    return "podman", ""


ENGINE, NO_ENGINE = _find_engine()
if ENGINE is None:
    pytestmark.append(pytest.mark.skip(reason=NO_ENGINE))


def container_logs(name: str) -> str:
    done = engine("logs", name, check=False)
    return done.stdout + done.stderr


def engine(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([ENGINE, *args], capture_output=True, text=True, env=_engine_env(), timeout=timeout)
    if check:
        assert done.returncode == 0, f"{ENGINE} {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def make(*targets: str, home: Path, timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(["make", "--no-print-directory", *targets, f"IMAGE={TAG}", f"GPU_IMAGE={GPU_TAG}",
                           f"ENGINE={ENGINE}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"})
    return done, time.monotonic() - started


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> dict:
    """`make image` with a private bento store; what it printed and how long it took."""
    done, seconds = make("image", home=tmp_path_factory.mktemp("bentoml_home"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    print(f"\nmake image: {seconds:.0f} s")
    return {"tag": TAG, "output": done.stdout, "seconds": seconds}


@contextlib.contextmanager
def running(*run_args: str, tag: str = TAG) -> Iterator[tuple[str, str, float]]:
    """The image in a detached container published on 127.0.0.1; yields (name, url, seconds until /readyz)."""
    name = f"digit-compare-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    started = time.monotonic()
    engine("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000", *run_args, tag)
    url = f"http://127.0.0.1:{port}"
    try:
        ready_after = wait_ready(url, name, started)
        yield name, url, ready_after
    finally:
        engine("rm", "-f", name, check=False)


def wait_ready(url: str, name: str, started: float, limit_s: float = 120) -> float:
    while time.monotonic() - started < limit_s:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        state = engine("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
        assert state != "false", container_logs(name)[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"not ready after {limit_s} s:\n{container_logs(name)[-3000:]}")


def test_the_image_builds_lean_and_the_base_image_is_cached(image, tmp_path):
    assert f"{TAG}:" in image["output"]  # deploy/image-size.sh's report
    size = float(engine("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    print(f"{TAG}: {size / 1e6:.0f} MB")
    assert size <= MAX_IMAGE_BYTES
    # The template was steered: no compilers, no git, no CUDA provider in the CPU image.
    found = engine("run", "--rm", "--entrypoint", "/bin/sh", TAG, "-c",
                   "command -v gcc cc g++ make git; ls /app/.venv/lib/python3.11/site-packages/onnxruntime/capi/",
                   check=False).stdout
    assert not any(tool in found.split() for tool in ("/usr/bin/gcc", "/usr/bin/git", "/usr/bin/make")), found
    assert "libonnxruntime_providers_cuda.so" not in found and "libonnxruntime.so" in found
    # A second build finds the base image by its recipe: nothing is rebuilt.
    again, _ = make("base-image", home=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is up to date" in again.stdout, again.stdout[-2000:]  # the build script's own word: no debootstrap ran


def ready_limit_s() -> float:
    """The 10 s target (2.5 s measured on this 2-core machine), stretched by how oversubscribed the CPUs are now:
    start-up is imports and model loading, so on a machine running 6 jobs per core it takes up to 6 times longer
    (11.7 s was seen at a load average of 12 on 2 cores). Capped at 30 s."""
    oversubscribed = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(30.0, READY_WITHIN_S * max(1.0, oversubscribed))


def expected_answers() -> dict[str, dict]:
    """The README's three examples, answered by the ensemble in this process."""
    ensemble = Ensemble.load(ROOT / "models", device="cpu")
    pair = prepare_pair_bytes((SAMPLES / "pair.png").read_bytes(), "image")
    two = join_pair(prepare_digit_bytes((SAMPLES / "digit_7_dark_on_light.png").read_bytes(), "left"),
                    prepare_digit_bytes((SAMPLES / "digit_3_light_on_dark.png").read_bytes(), "right"))
    batch = load_course_npz(SAMPLES / "batch.npz").x
    return {"compare_pair": ensemble.predict(pair[None], prior="course"),
            "compare": ensemble.predict(two[None], prior="uniform"),
            "compare_batch": ensemble.predict(batch, prior="course")}


def readme_answer(name: str, answer: dict) -> tuple[dict, dict]:
    """README.md's documented answer to its example NAME, and ``answer`` cut to the keys that example shows."""
    section = next(s for s in find_sections(ROOT / "README.md")
                   if s.kind == "example" and s.argument.split()[0] == name)
    documented = json.loads("\n".join(section.blocks[1][1]))
    return documented, select(answer, section.option("show"))


def test_the_container_answers_the_readme_examples_as_the_ensemble_in_process(image):
    expected = expected_answers()
    with running() as (_, url, ready_after):
        print(f"ready {ready_after:.1f} s after start")
        assert ready_after <= ready_limit_s()
        pair = httpx.post(f"{url}/compare_pair", files={"image": (SAMPLES / "pair.png").open("rb")}, timeout=60)
        assert pair.status_code == 200, pair.text
        two = httpx.post(f"{url}/compare", timeout=60, files={
            "left": (SAMPLES / "digit_7_dark_on_light.png").open("rb"),
            "right": (SAMPLES / "digit_3_light_on_dark.png").open("rb")})
        assert two.status_code == 200, two.text
        batch = httpx.post(f"{url}/compare_batch", files={"file": (SAMPLES / "batch.npz").open("rb")}, timeout=60)
        assert batch.status_code == 200, batch.text
        info = httpx.get(f"{url}/info", timeout=30).json()
    # What the README shows (kept current by tools.doc_examples for whatever models are committed): the same keys,
    # booleans and digits, probabilities to the printed decimals.
    assert differences(*readme_answer("compare-pair", pair.json())) == []
    assert differences(*readme_answer("compare", two.json())) == []
    assert pair.json()["digits"] == {"left": 7, "right": 9} and two.json()["digits"] == {"left": 7, "right": 3}
    for name, answer in (("compare_pair", pair.json()), ("compare", two.json())):
        np.testing.assert_allclose(answer["probability"], expected[name].probability[0], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(batch.json()["probabilities"], expected["compare_batch"].probability, atol=1e-5)
    assert batch.json()["labels"] == expected["compare_batch"].label.tolist()
    assert info["provider"] == "CPUExecutionProvider"


def test_the_container_runs_as_a_non_root_user(image):
    assert engine("image", "inspect", "--format", "{{.Config.User}}", TAG).stdout.strip() == f"{IMAGE_UID}:{IMAGE_UID}"
    with running() as (name, _, _):
        assert engine("exec", name, "id", "-u").stdout.strip() == str(IMAGE_UID)
        # the server itself (the container's first process), not only what exec starts
        status = engine("exec", name, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == [str(IMAGE_UID)] * 4, status


def test_a_tampered_model_stops_the_container_naming_the_file(image, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns("checkpoints"))
    graph = models / "ensemble.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    for folder in (models, *[p for p in models.rglob("*") if p.is_dir()]):
        folder.chmod(0o755)  # the container's non-root user reads the copy
    name = f"digit-compare-test-{uuid.uuid4().hex[:8]}"
    try:
        engine("run", "-d", "--name", name, "-v", f"{models}:/models:ro", "-e", "DIGIT_COMPARE_MODELS=/models", TAG)
        waited = engine("wait", name, timeout=120)
        code = int(waited.stdout.strip().splitlines()[-1])
        text = container_logs(name)
    finally:
        engine("rm", "-f", name, check=False)
    assert code != 0, text[-3000:]
    assert "refusing to serve" in text and "ensemble.onnx" in text, text[-3000:]


def test_sigterm_under_load_drains_the_container_and_exits_in_time(image):
    """What a rolling update does to a pod: SIGTERM to the container's first process (`bentoml serve`) under 16
    closed-loop clients. Every request sent before the signal gets its 200; later ones may find the door shut
    (refused or reset), never a 5xx; the container exits (a hang fails; the time it takes is measured apart)."""
    with running() as (name, url, _):
        with ClosedLoop(url, seed=5) as load:
            load.wait_answered(ANSWERED_BEFORE_SIGNAL)
            signalled = time.monotonic()
            engine("kill", "--signal", "TERM", name)
            waited = engine("wait", name, timeout=EXIT_HANG_S)
            exited = time.monotonic() - signalled
        code = int(waited.stdout.strip().splitlines()[-1])
        logs = container_logs(name)
    assert_drained(load.outcomes, signalled, exited, logs, f"the container (exit status {code})")


def kube_play_copy(folder: Path, port: int) -> Path:
    """deploy/k8s/cpu as `podman kube play` can run it on one machine: this image, one replica (podman starts
    one pod per replica, all on the same host port), and the port published on 127.0.0.1. Nothing else changes:
    probes, user, read-only root, emptyDir, environment. Service, HPA and PDB need a cluster; podman skips them."""
    docs = []
    layout = ROOT / "deploy" / "k8s" / "cpu"
    for name in yaml.safe_load((layout / "kustomization.yaml").read_text())["resources"]:
        docs += [d for d in yaml.safe_load_all((layout / name).read_text()) if d]
    played = copy.deepcopy(docs)
    (deployment,) = [d for d in played if d["kind"] == "Deployment"]
    deployment["spec"]["replicas"] = 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "digit-compare:latest"
    container["image"] = f"localhost/{TAG}"
    container["ports"][0].update(hostPort=port, hostIP="127.0.0.1")
    path = folder / "cpu.yaml"
    path.write_text(yaml.safe_dump_all(played))
    return path


@pytest.mark.skipif(ENGINE != "podman", reason="kube play is podman's (docker has no Kubernetes player)")
def test_the_cpu_layout_runs_under_podman_kube_play(image):
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        manifest = kube_play_copy(Path(folder), port)
        started = time.monotonic()
        try:
            played = engine("kube", "play", str(manifest), timeout=180)
            assert "Pod:" in played.stdout, played.stdout
            url = f"http://127.0.0.1:{port}"
            container = "digit-compare-pod-0-digit-compare"
            ready_after = wait_ready(url, container, started)
            print(f"\nkube play: ready {ready_after:.1f} s after play")
            answer = httpx.post(f"{url}/compare_pair", files={"image": (SAMPLES / "pair.png").open("rb")}, timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.json()["digits"] == {"left": 7, "right": 9}
            assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
            # the pod spec's security context really applies
            assert engine("exec", container, "id", "-u").stdout.strip() == str(IMAGE_UID)
            assert engine("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container).stdout.strip() == "true"
            denied = engine("exec", container, "touch", "/home/bentoml/bento/x", check=False)
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        finally:
            engine("kube", "down", str(manifest), check=False, timeout=120)
        assert "digit-compare-pod-0" not in engine("pod", "ps", "--format", "{{.Name}}").stdout


@pytest.fixture(scope="module")
def gpu_image(image, tmp_path_factory) -> str:
    """`make image-gpu`: the CPU image plus onnxruntime-gpu's CUDA 13 and cuDNN 9 wheels (about 2.5 GB)."""
    done, seconds = make("image-gpu", home=tmp_path_factory.mktemp("bentoml_home_gpu"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    print(f"\nmake image-gpu: {seconds:.0f} s")
    return GPU_TAG


def test_the_gpu_image_starts_on_a_cpu_host_naming_its_provider(gpu_image):
    """Without a GPU the GPU image serves on the CPU, and says so; its CUDA provider finds every library it links
    but the driver's libcuda.so.1, which the host's GPU runtime (--gpus all, CDI) mounts."""
    linked = engine("run", "--rm", "--entrypoint", "ldd", gpu_image,
                    "/app/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so").stdout
    missing = sorted(line.split()[0] for line in linked.splitlines() if "not found" in line)
    assert missing == ["libcuda.so.1"], linked
    assert "/nvidia/cu13/lib/libcudart.so.13" in linked and "/nvidia/cu13/lib/libcublas.so.13" in linked
    expected = expected_answers()["compare_pair"]
    with running(tag=gpu_image) as (name, url, ready_after):
        print(f"GPU image ready {ready_after:.1f} s after start (on the CPU)")
        pair = httpx.post(f"{url}/compare_pair", files={"image": (SAMPLES / "pair.png").open("rb")}, timeout=60)
        info = httpx.get(f"{url}/info", timeout=30).json()
        logs = container_logs(name)
    assert pair.status_code == 200, pair.text
    np.testing.assert_allclose(pair.json()["probability"], expected.probability[0], atol=1e-5)
    assert info["provider"] == "CPUExecutionProvider"
    assert "loaded 10 models from /home/bentoml/bento/src/models on CPUExecutionProvider" in logs, logs[-3000:]
    # Told to use the GPU where there is none, it refuses to start, saying why, instead of scoring on the CPU.
    name = f"digit-compare-test-{uuid.uuid4().hex[:8]}"
    try:
        engine("run", "-d", "--name", name, "-e", "DIGIT_COMPARE_DEVICE=cuda", gpu_image)
        code = int(engine("wait", name, timeout=120).stdout.strip().splitlines()[-1])
        refused = container_logs(name)
    finally:
        engine("rm", "-f", name, check=False)
    assert code != 0 and "no usable GPU" in refused, refused[-3000:]
