"""The torch-free run time: the fused ONNX graph of the base models, then the LightGBM stacker.

    ens = Ensemble.load("models")
    pred = ens.predict(pairs_uint8)        # (N, 28, 56) uint8 (ensemble.contract)
    pred.probability, pred.label, pred.base_probabilities, pred.digits
    ens.predict(pairs_uint8, prior="uniform")  # two free pictures rather than a course pair (ensemble.priors)
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from ensemble.course_data import as_pairs_uint8
from ensemble.cpu import INT8_DOT_FLAGS, Cpu, this_cpu
from ensemble.features import FeatureMismatchError, check_feature_spec, sigmoid, stacking_features
from ensemble.manifest import MANIFEST, ManifestError, read_manifest, verify_artifact
from ensemble.priors import DESCRIPTIONS, check_prior, read_frequencies, uniform_greater_probability

log = logging.getLogger("ensemble")
MODELS_ENV = "DIGIT_COMPARE_MODELS"  # the models folder the service serves (default: models/ beside service.py)
DEVICE_ENV = "DIGIT_COMPARE_DEVICE"  # auto (default) | cpu | cuda
PRECISION_ENV = "DIGIT_COMPARE_PRECISION"  # auto (default: int8 on CPU when shipped, fp32 on GPU) | fp32 | int8
CHUNK = 2048  # pairs per ONNX Runtime call: bounds memory on large inputs


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup v2 CPU quota.

    ``os.cpu_count()`` reports the host's cores; in a container limited to 2 CPUs, 16 ONNX Runtime
    threads would only fight over them.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def resolve_device(device: str | None = None) -> str:
    """``cpu`` or ``cuda`` from a setting (argument, else $DIGIT_COMPARE_DEVICE, else auto)."""
    device = (device or os.environ.get(DEVICE_ENV, "auto")).lower()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV} must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return "cpu"
    usable = gpu_usable()  # asks the CUDA driver: once, not per check
    if device == "cuda" and not usable:
        raise RuntimeError(f"{DEVICE_ENV}=cuda, but no usable GPU (or no onnxruntime CUDA provider) was found")
    return "cuda" if usable else "cpu"


class PrecisionChoice(NamedTuple):
    """Which graph runs (``fp32`` or ``int8``) and why: shown by ``/info`` and the start-up log line."""

    precision: str
    reason: str


def resolve_precision(precision: str | None, device: str, has_int8: bool, cpu: Cpu | None = None) -> PrecisionChoice:
    """``fp32`` or ``int8`` from a setting (argument, else $DIGIT_COMPARE_PRECISION, else auto).

    ``auto`` takes the int8 graph only on a CPU with an int8 dot product (VNNI or AMX, ``ensemble.cpu``) and only
    when the manifest ships one: there the int8 student answered 1.8x faster than fp32; on an AVX2-only AMD EPYC
    it answered at 0.88x (batch 1) and 0.96x (batch 256), so ``auto`` serves fp32 there (docs/speed.md, "Per CPU").
    """
    precision = (precision or os.environ.get(PRECISION_ENV, "auto")).lower()
    if precision not in ("auto", "fp32", "int8"):
        raise ValueError(f"{PRECISION_ENV} must be auto, fp32 or int8, got {precision!r}")
    if precision == "int8" and not has_int8:
        raise ManifestError(f"{PRECISION_ENV}=int8, but the manifest lists no int8 graph "
                            "(export it with `python -m export.quantize`)")
    if precision != "auto":
        return PrecisionChoice(precision, f"{precision} asked for ({PRECISION_ENV} or the precision argument)")
    if device != "cpu":
        return PrecisionChoice("fp32", "on the GPU the fp32 graph runs")
    if not has_int8:
        return PrecisionChoice("fp32", "the manifest lists no int8 graph")
    cpu = cpu or this_cpu()
    if cpu.int8_dot:
        return PrecisionChoice("int8", f"{cpu.model} has {', '.join(cpu.int8_dot)}: int8 dot products")
    return PrecisionChoice("fp32", f"{cpu.model} has no int8 dot product ({', '.join(INT8_DOT_FLAGS)}): "
                                   "int8 is slower than fp32 there")


def hardware_info(choice: PrecisionChoice, provider: str) -> dict:
    """The hardware-dependent part of ``info()``: the provider, the precision and why, and the CPU it was read from."""
    return {"provider": provider, "precision": choice.precision, "precision_reason": choice.reason,
            "cpu": this_cpu().describe()}


def gpu_usable() -> bool:
    """True when onnxruntime has its CUDA provider AND the CUDA driver reports at least one device.

    Asking the driver directly (instead of trying to open a CUDA session) keeps a machine without a
    GPU free of onnxruntime's error messages.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def open_session(path: Path, device: str | None = None, threads: int | None = None,
                 spinning: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime session on the GPU when one is usable (or forced), else on the CPU.

    Options, on purpose: all graph optimisations (fuses Conv + BatchNorm + ReLU, and int8 QDQ pairs
    into integer kernels); ``threads`` intra-op threads (default: one per usable CPU) and a single
    inter-op thread (the fused graph is one long chain of convolutions: parallelism within each
    operator is what pays). The service's scorer may ask for fewer (DIGIT_COMPARE_SCORER_THREADS).
    ``spinning=False``: idle intra-op threads sleep instead of spinning for work, which is what several
    processes sharing the cores need (each spinning pool burns the cores the others compute on).
    """
    use_cuda = resolve_device(device) == "cuda"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cpus()
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
        raise ManifestError(f"{path}: ONNX Runtime cannot open it ({err})") from err
    log.info("ONNX Runtime provider: %s", session.get_providers()[0])
    return session


def fused_outputs(session: ort.InferenceSession, pairs: np.ndarray,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The fused graph's raw outputs, logits (N, M) and digit_probs (N, M, 2, 10), in bounded chunks."""
    pairs = as_pairs_uint8(pairs, "pairs")
    logits, digit_probs = [], []
    chunks = range(0, len(pairs), CHUNK)
    for start in tqdm(chunks, desc="scoring", unit="chunk", disable=not progress or len(chunks) < 2):
        a, b = session.run(None, {"pairs": pairs[start:start + CHUNK]})
        logits.append(a)
        digit_probs.append(b)
    return np.concatenate(logits), np.concatenate(digit_probs)


@dataclass
class Prediction:
    probability: np.ndarray  # (N,) P(left > right) under ``prior``
    label: np.ndarray  # (N,) 0/1
    base_probabilities: np.ndarray  # (N, M) each base model's P(left > right), in Ensemble.names order
    digits: np.ndarray  # (N, 2) most likely left / right digit (averaged digit heads)
    logits: np.ndarray  # (N, M) base pair logits
    digit_probs: np.ndarray  # (N, M, 2, 10)
    features: np.ndarray  # (N, F) the stacking features
    prior: str = "course"  # which prior produced probability and label (ensemble.priors)
    by_prior: dict[str, np.ndarray] | None = None  # every prior's P(left > right), each (N,)
    #: each base model's P(left > right) under every prior, each (N, M): under ``course`` its pair head (as
    #: ``base_probabilities``), under ``uniform`` the Bayes read-out of that model's own digit heads
    base_by_prior: dict[str, np.ndarray] | None = None


class LogisticStacker:
    """Logistic-regression stacking stored as JSON (its feature names, standardisation and coefficients),
    scored with numpy."""

    def __init__(self, spec: dict):
        self.features: list[str] = list(spec["features"])
        self.mean = np.asarray(spec["mean"], dtype=np.float64)
        self.scale = np.asarray(spec["scale"], dtype=np.float64)
        self.coef = np.asarray(spec["coef"], dtype=np.float64)
        self.intercept = float(spec["intercept"])
        if not len(self.features) == len(self.mean) == len(self.scale) == len(self.coef):
            raise ValueError(f"{len(self.features)} feature names but {len(self.coef)} coefficients")

    def predict(self, features: np.ndarray) -> np.ndarray:
        return sigmoid(((features - self.mean) / self.scale) @ self.coef + self.intercept)


def check_stacker_features(models_dir: Path, manifest: dict, booster: lgb.Booster, logreg: LogisticStacker) -> None:
    """Both stackers were fitted on the features the manifest names, and this code computes them all."""
    where = Path(models_dir) / MANIFEST
    try:
        names = check_feature_spec(manifest["features"], tuple(m["name"] for m in manifest["models"]))
    except FeatureMismatchError as err:
        raise ManifestError(f"{where}: {err}") from err
    if booster.feature_name() != names:
        raise ManifestError(f"{where}: the LightGBM stacker was fitted on {booster.num_feature()} features "
                            f"({', '.join(booster.feature_name()[:3])}, ...), not the {len(names)} the manifest names")
    if logreg.features != names:
        raise ManifestError(f"{where}: the logistic stacker was fitted on features other than the manifest's")


class Ensemble:
    """The base models (the manifest's list) in one fused ONNX graph, stacked by LightGBM."""

    def __init__(self, models_dir: Path, manifest: dict, session: ort.InferenceSession, booster: lgb.Booster,
                 logreg: LogisticStacker, precision: PrecisionChoice,
                 digit_frequencies: np.ndarray | None = None):
        self.models_dir = models_dir
        self.manifest = manifest
        self.session = session
        self.booster = booster
        self.logreg = logreg
        self.names: tuple[str, ...] = tuple(m["name"] for m in manifest["models"])
        self.feature_names: list[str] = list(manifest["features"]["names"])
        self.best_single: str = manifest["best_single"]
        self.provider: str = session.get_providers()[0]
        self.precision_choice = precision
        self.precision = precision.precision  # which fused graph runs: fp32 or int8
        # The class frequencies the digit heads learned, divided out by the uniform prior (ensemble.priors).
        self.digit_frequencies = read_frequencies(None) if digit_frequencies is None else digit_frequencies

    @classmethod
    def load(cls, models_dir: str | os.PathLike = "models", device: str | None = None,
             precision: str | None = None, threads: int | None = None, spinning: bool = True) -> Ensemble:
        """Verify the manifest and the serving artifacts' hashes, then open them.

        ``device`` (cpu | cuda | auto) and ``precision`` (fp32 | int8 | auto) default to
        $DIGIT_COMPARE_DEVICE and $DIGIT_COMPARE_PRECISION, else auto; ``threads``: ONNX Runtime's
        intra-op threads on the CPU (default: one per usable CPU); ``spinning``: see ``open_session``.
        """
        models_dir = Path(models_dir)
        manifest = read_manifest(models_dir)
        device = resolve_device(device)
        choice = resolve_precision(precision, device, "fused_int8" in manifest["artifacts"])
        fused = verify_artifact(models_dir, manifest, "fused_int8" if choice.precision == "int8" else "fused")
        lightgbm_path = verify_artifact(models_dir, manifest, "lightgbm")
        logreg_path = verify_artifact(models_dir, manifest, "logreg")
        try:
            booster = lgb.Booster(model_file=str(lightgbm_path))
        except lgb.basic.LightGBMError as err:
            raise ManifestError(f"{lightgbm_path}: not a LightGBM text model ({err})") from err
        try:
            logreg = LogisticStacker(json.loads(logreg_path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"{logreg_path}: malformed logistic-regression stacker ({err})") from err
        check_stacker_features(models_dir, manifest, booster, logreg)
        try:
            frequencies = read_frequencies(manifest.get("priors"))
        except ValueError as err:
            raise ManifestError(f"{models_dir / MANIFEST}: {err}") from err
        session = open_session(fused, device, threads, spinning)
        outputs = session.get_outputs()[0].shape  # logits: ["batch", M]
        if len(outputs) != 2 or outputs[1] != len(manifest["models"]):
            raise ManifestError(f"{fused}: the fused graph scores {outputs[1:]} models, the manifest lists "
                                f"{len(manifest['models'])}")
        return cls(models_dir, manifest, session, booster, logreg, choice, frequencies)

    def predict(self, pairs: np.ndarray, progress: bool = False, prior: str = "course") -> Prediction:
        """Score pairs (N, 28, 56) uint8 (a float array in [0, 1] or [0, 255] is converted).

        ``prior`` (ensemble.priors): ``course`` (the LightGBM stacker, fitted on course pairs) or ``uniform``
        (any two digits a != b: the Bayes read-out of the averaged digit heads). Both are computed (the
        read-out costs next to nothing), so ``by_prior`` holds each; ``probability`` and ``label`` are
        ``prior``'s.
        """
        check_prior(prior)
        logits, digit_probs = fused_outputs(self.session, pairs, progress)
        features, _ = stacking_features(logits, digit_probs, self.names, self.feature_names)
        mean_digits = digit_probs.mean(axis=1)  # (N, 2, 10)
        by_prior = {"course": self.booster.predict(features, num_threads=1),
                    "uniform": uniform_greater_probability(mean_digits, self.digit_frequencies)}
        base_probabilities = sigmoid(logits.astype(np.float64))
        base_by_prior = {"course": base_probabilities,
                         "uniform": uniform_greater_probability(digit_probs, self.digit_frequencies)}  # (N, M)
        probability = by_prior[prior]
        return Prediction(probability=probability, label=(probability >= 0.5).astype(np.int64),
                          base_probabilities=base_probabilities,
                          digits=mean_digits.argmax(axis=-1), logits=logits, digit_probs=digit_probs,
                          features=features, prior=prior, by_prior=by_prior, base_by_prior=base_by_prior)

    def method_probabilities(self, pred: Prediction) -> dict[str, tuple[str, np.ndarray]]:
        """Every scoring method side by side: name -> (kind, P(left > right))."""
        methods = {name: ("base", pred.base_probabilities[:, i]) for i, name in enumerate(self.names)}
        methods["best_single"] = ("baseline", pred.base_probabilities[:, self.names.index(self.best_single)])
        methods["mean"] = ("baseline", pred.base_probabilities.mean(axis=1))
        methods["vote"] = ("baseline", (pred.base_probabilities >= 0.5).mean(axis=1))
        methods["logreg"] = ("stack", self.logreg.predict(pred.features))
        # The stacker's answer whatever prior the prediction was asked for (the uniform one is no stacker).
        methods["lightgbm"] = ("stack", pred.by_prior["course"] if pred.by_prior else pred.probability)
        return methods

    def info(self) -> dict:
        """What is loaded: names, versions, hashes, data, metrics, provider."""
        m = self.manifest
        return {"models": list(self.names), "best_single": self.best_single, "format_version": m["format_version"],
                "created": m.get("created"), **hardware_info(self.precision_choice, self.provider),
                "artifacts": {role: {"file": a["file"], "sha256": a["sha256"]} for role, a in m["artifacts"].items()},
                "training": m.get("training", {}), "metrics": m.get("metrics", {}),
                "priors": {"choices": dict(DESCRIPTIONS), "digit_frequencies": self.digit_frequencies.round(6).tolist(),
                           "digit_frequencies_source": (m.get("priors") or {}).get(
                               "source", "the course pairing rule (not recorded in this manifest)")}}
