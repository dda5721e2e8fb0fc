"""The service's settings: ``DIGIT_COMPARE_*`` environment variables (read at import) and fixed values, each
with the reason for its value; ``/info`` reports them (``settings_info``)."""

from __future__ import annotations

import os
import typing as t
from collections.abc import Callable

from ensemble.preprocess import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from ensemble.runtime import DEVICE_ENV, resolve_device, usable_cpus
from serving.inputs import MAX_PAIRS, MAX_REQUEST_BYTES, env_float, env_int

LAYOUT_ENV = "DIGIT_COMPARE_LAYOUT"
#: Where the models run. ``in_process``: inside each API worker (no hop between processes: on a CPU, the hop's
#: pickling and internal HTTP cost more CPU per answer than the models; docs/speed.md). ``scorer``: in one
#: ``Scorer`` process behind BentoML's adaptive batching, fed by the API workers (on a GPU, one process owns
#: the device and large batches pay). ``auto``: ``scorer`` when the models would run on a GPU, else
#: ``in_process``.
LAYOUTS = ("auto", "in_process", "scorer")


def _models_device() -> str:
    """Where the models will run: a forced ``cuda`` counts as the GPU (the service refuses it at start, with a
    message, when there is none), else $DIGIT_COMPARE_DEVICE or the probe."""
    return "cuda" if os.environ.get(DEVICE_ENV, "").lower() == "cuda" else resolve_device()


def choose_layout(setting: str | None = None, device: Callable[[], str] = _models_device) -> str:
    """``in_process`` or ``scorer`` from a setting (argument, else $DIGIT_COMPARE_LAYOUT, else auto);
    ``device()`` says where the models would run (``cpu`` or ``cuda``: $DIGIT_COMPARE_DEVICE, else a probe)."""
    setting = (setting or os.environ.get(LAYOUT_ENV) or "auto").lower()
    if setting not in LAYOUTS:
        raise ValueError(f"{LAYOUT_ENV} must be one of {', '.join(LAYOUTS)}, got {setting!r}")
    if setting != "auto":
        return setting
    return "scorer" if device() == "cuda" else "in_process"


LAYOUT = choose_layout()
#: API worker processes (BentoML's ``workers``): one per usable CPU, so every core reads requests (and, in
#: process, runs models); each worker has its own ONNX Runtime session in the in-process layout.
WORKERS = env_int("DIGIT_COMPARE_WORKERS", usable_cpus())

#: Adaptive batching of single-pair requests: at most this many pairs per inference call ...
MAX_BATCH_SIZE = env_int("DIGIT_COMPARE_MAX_BATCH_SIZE", 64)
#: ... and requests whose estimated wait plus inference exceeds this many ms are shed with 503. Not lower:
#: under a 10,000-pair batch and 64 clients on a busy 2-core CPU a single pair can wait 2 s, and a shed
#: request is a 503 the client did nothing to earn (the queue is bounded by the clients anyway).
MAX_LATENCY_MS = env_int("DIGIT_COMPARE_MAX_LATENCY_MS", 10_000)
#: compare_batch keeps at most this many chunks (of MAX_BATCH_SIZE pairs) in the scorer's queue at once:
#: two keep the scorer busy while a chunk travels, and leave room for single requests in between.
BATCH_IN_FLIGHT = 2
#: Single pairs (compare, compare_pair) go to the scorer at most this many calls at a time; pairs that arrive
#: meanwhile wait in the API worker and go together in the next call (a lone request goes at once). Measured at
#: 64 clients on 2 cores: +34% answers/s and a lower p99 against one call per pair (README, "Speed"), because
#: each call to the scorer costs both processes CPU time (HTTP, serialisation) whatever its size.
SINGLE_PAIR_CALLS_IN_FLIGHT = 2
#: ... and at most this many single pairs wait for a call (more are refused with 503 at once, as are pairs that
#: waited longer than MAX_LATENCY_MS): 16 full batches, a few seconds of inference on 2 CPU cores.
MAX_WAITING_PAIRS = 16 * MAX_BATCH_SIZE
#: ONNX Runtime threads of each process that runs the models (default: one per usable CPU). In the scorer layout,
#: one fewer (leaving a core to the API worker) measured the same at 64 clients (205 vs 218 answers/s) and halved
#: compare_batch (330 vs 584 pairs/s; 2 cores).
SCORER_THREADS = env_int("DIGIT_COMPARE_SCORER_THREADS", usable_cpus())
#: BentoML's access log, one line per request (``DIGIT_COMPARE_ACCESS_LOG=1`` turns it on). Off by default: it
#: cost about 3% of the API worker's CPU per answer (docs/speed.md), and where the service is deployed an
#: ingress or load balancer logs the requests anyway. An exception inside an API is logged either way
#: (serving/errors.py: one line for a client's mistake).
ACCESS_LOG = os.environ.get("DIGIT_COMPARE_ACCESS_LOG", "0").strip().lower() in ("1", "true", "yes", "on")
#: Whether ONNX Runtime's idle threads spin for work (DIGIT_COMPARE_ORT_SPINNING=1|0). By default they do not when
#: several workers run models on the same cores: each worker's spinning pool burnt the cores the others computed
#: on. Measured at 64 clients, 2 workers x 2 threads on 2 cores: 216 answers/s spinning, 338 not; compare_batch
#: 499 vs 568 pairs/s (docs/speed.md).
_SPIN_DEFAULT = "0" if LAYOUT == "in_process" and WORKERS > 1 else "1"
ORT_SPINNING = os.environ.get("DIGIT_COMPARE_ORT_SPINNING", _SPIN_DEFAULT).strip() not in ("0", "false", "no", "off")
#: A client that sends no byte for this long, or not its whole body within BODY_TIMEOUT_S, gets a 408.
BODY_IDLE_TIMEOUT_S = env_float("DIGIT_COMPARE_BODY_IDLE_TIMEOUT_S", 15.0)
BODY_TIMEOUT_S = env_float("DIGIT_COMPARE_BODY_TIMEOUT_S", 100.0)
#: Whole request (BentoML's traffic timeout, 504 after it). Sized for the largest batch: 10,000 pairs
#: take ~50 s at the ~200 pairs/s of this 2-core CPU under load, two at once ~105 s (120 s was too short).
REQUEST_TIMEOUT_S = 300
#: On SIGTERM the scorer keeps serving the API workers' last calls for at most this long (serving/shutdown.py):
#: with the API workers' own drain it keeps the whole stop within 10 s (a pod's default grace period is 30 s).
SCORER_DRAIN_LIMIT_S = 8.0
#: The scorer's, for one inference call.
SCORER_TIMEOUT_S = 60
#: Images decoded at the same time per worker (bounds memory: a 25 MP RGBA image is 100 MB decoded).
DECODE_CONCURRENCY = 2
#: Request bodies above this size are parsed one at a time per worker (a 64 MiB JSON body becomes about
#: 350 MB of Python lists while parsed), in a thread, so the event loop keeps answering.
LARGE_BODY_BYTES = 1024 * 1024
#: Each route's prior when the request names none (ensemble.priors): two free pictures can be any pair of
#: digits; a course-style pair comes from the course's pairs.
DEFAULT_PRIORS: dict[str, str] = {"/compare": "uniform", "/compare_pair": "course", "/compare_batch": "course"}


def settings_info() -> dict[str, t.Any]:
    """What /info reports of these settings."""
    return {
        "device_setting": os.environ.get(DEVICE_ENV, "auto"),
        "layout": LAYOUT, "workers": WORKERS, "access_log": ACCESS_LOG, "ort_spinning": ORT_SPINNING,
        "batching": {"max_batch_size": MAX_BATCH_SIZE, "max_latency_ms": MAX_LATENCY_MS,
                     "batch_endpoint_chunk": MAX_BATCH_SIZE, "batch_endpoint_chunks_in_flight": BATCH_IN_FLIGHT,
                     "single_pair_calls_in_flight": SINGLE_PAIR_CALLS_IN_FLIGHT,
                     "max_waiting_single_pairs": MAX_WAITING_PAIRS, "scorer_threads": SCORER_THREADS},
        "limits": {"max_pairs_per_request": MAX_PAIRS, "max_request_bytes": MAX_REQUEST_BYTES,
                   "max_image_pixels": MAX_IMAGE_PIXELS, "max_image_bytes": MAX_IMAGE_BYTES,
                   "body_idle_timeout_s": BODY_IDLE_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S,
                   "request_timeout_s": REQUEST_TIMEOUT_S},
    }
