"""The service's settings: one typed object, read once from ``DIGIT_COMPARE_*`` environment variables at start.

``Settings`` is the one source of every variable: its fields (name, type, default, description) are what
``/info`` reports, what the README's environment table lists (``python -m tools.doc_examples --write``) and what
``bentoml serve`` logs at start. A ``DIGIT_COMPARE_*`` variable that is not a field stops the service with a
message naming it and the closest known name (a misspelt ``DIGIT_COMPARE_WORKER=1`` would otherwise be ignored).
The fixed values below the class are not settings: each says why it has its value.
"""

from __future__ import annotations

import difflib
import os
import typing as t
from collections.abc import Mapping
from pathlib import Path

from pydantic import BeforeValidator, Field, PositiveFloat, PositiveInt, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ensemble.runtime import resolve_device, usable_cpus

PREFIX = "DIGIT_COMPARE_"
_Lower = BeforeValidator(lambda value: value.lower() if isinstance(value, str) else value)


class Settings(BaseSettings):
    """``DIGIT_COMPARE_<FIELD>`` sets each field. ``auto`` and unset values are resolved at load (``load``)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    models: Path | None = Field(None, description="the models folder served (default: `models/` beside `service.py`)")
    model: t.Annotated[t.Literal["ensemble", "student"], _Lower] = Field(
        "ensemble", description="`ensemble`, or `student`: the distilled single network, when the manifest lists one "
                                "(also the CLI's `--model`)")
    device: t.Annotated[t.Literal["auto", "cpu", "cuda"], _Lower] = Field(
        "auto", description="`cpu`, `cuda` or `auto` (CUDA when onnxruntime-gpu finds a device); `/info` says which "
                            "runs")
    precision: t.Annotated[t.Literal["auto", "fp32", "int8"], _Lower] = Field(
        "auto", description="`fp32`, `int8` or `auto`: int8 on a CPU with an int8 dot product (VNNI or AMX) when the "
                            "manifest lists an int8 graph for the model served (the committed student's, not the "
                            "ensemble's); `/info` says which runs and why")
    # in_process: the models inside each API worker (no hop between processes: on a CPU the hop's pickling and
    # internal HTTP cost more CPU per answer than the models, docs/speed.md); scorer: one Scorer process behind
    # BentoML's adaptive batching (on a GPU, one process owns the device and large batches pay).
    layout: t.Annotated[t.Literal["auto", "in_process", "scorer"], _Lower] = Field(
        "auto", description="`in_process` (the models in each API worker), `scorer` (in one `Scorer` process behind "
                            "adaptive batching), or `auto`: `scorer` with a GPU, else `in_process` "
                            "(`docs/speed.md`)")
    workers: PositiveInt | None = Field(None, description="API worker processes (default: one per usable CPU)")
    max_batch_size: PositiveInt = Field(64, description="pairs per inference call (single pairs coalesced; "
                                                        "`compare_batch`'s chunk)")
    # Not lower: under a 10,000-pair batch and 64 clients on a busy 2-core CPU a single pair can wait 2 s, and a
    # shed request is a 503 the client did nothing to earn.
    max_latency_ms: PositiveInt = Field(10_000, description="a request whose estimated wait exceeds this is shed "
                                                            "with 503")
    # In the scorer layout, one fewer thread measured the same at 64 clients and halved compare_batch (2 cores).
    scorer_threads: PositiveInt | None = Field(None, description="ONNX Runtime threads of each process that runs "
                                                                 "the models (default: one per usable CPU)")
    # Several workers' spinning pools burnt the cores the others computed on: 216 answers/s spinning, 338 not
    # (64 clients, 2 workers x 2 threads on 2 cores, docs/speed.md).
    ort_spinning: bool | None = Field(None, description="whether ONNX Runtime's idle threads spin (default: not "
                                                        "in process with several workers, else yes)")
    # Off by default: about 3% of the API worker's CPU per answer, and an ingress logs requests anyway.
    access_log: bool = Field(False, description="`1`: BentoML's access log, a line per request")
    # On by default; off only to measure what recording them costs (docs/monitoring.md, "Cost").
    model_metrics: bool = Field(True, description="`0`: `/metrics` without the answers' metrics (confidence, "
                                                  "disagreement, refusals; `docs/monitoring.md`)")
    tracemalloc: Path | None = Field(None, description="a folder: each worker reports its Python allocations' "
                                                       "growth there (diagnosis; `bench/soak.py --tracemalloc`)")
    tracemalloc_every_s: PositiveFloat = Field(60.0, description="seconds between those reports")
    max_pairs: PositiveInt = Field(10_000, description="pairs per `compare_batch` request (an `.npz` upload; JSON "
                                                       "pairs stop at `JSON_MAX_PAIRS`)")
    max_request_bytes: PositiveInt = Field(64 * 1024 * 1024, description="`compare_batch`'s `.npz` upload body")
    body_idle_timeout_s: PositiveFloat = Field(15.0, description="seconds a client may send nothing (408)")
    body_timeout_s: PositiveFloat = Field(100.0, description="seconds for a whole body (408)")

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        """``auto`` and unset values -> what this machine gets (frozen: set through ``object.__setattr__``)."""
        layout = choose_layout(self.layout, resolve_device(self.device))  # cuda without a GPU: RuntimeError
        workers = self.workers or usable_cpus()
        spinning = self.ort_spinning if self.ort_spinning is not None else not (layout == "in_process" and workers > 1)
        resolved = {"layout": layout, "workers": workers, "scorer_threads": self.scorer_threads or usable_cpus(),
                    "ort_spinning": spinning}
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        return self


def choose_layout(layout: str, device: str) -> str:
    """``in_process`` or ``scorer``: ``auto`` is the scorer where the models run on a GPU (``device``)."""
    return layout if layout != "auto" else ("scorer" if device == "cuda" else "in_process")


def variable(field: str) -> str:
    return PREFIX + field.upper()


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One message per ``DIGIT_COMPARE_*`` variable that is no setting, naming the closest one."""
    known = [variable(name) for name in Settings.model_fields]
    messages = []
    for name in sorted(n for n in environ if n.upper().startswith(PREFIX) and n.upper() not in known):
        # Compared without the prefix they all share, which would make every name look close.
        close = difflib.get_close_matches(name.upper()[len(PREFIX):], [k[len(PREFIX):] for k in known], n=1)
        hint = f"; did you mean {PREFIX}{close[0]}?" if close else f"; the settings are {', '.join(known)}"
        messages.append(f"unknown setting {name}{hint}")
    return messages


def load() -> Settings:
    """The settings from the environment, or ValueError saying every problem at once."""
    problems = unknown_variables(os.environ)
    try:
        settings = Settings()
    except ValidationError as err:
        problems += [f"{variable(str(e['loc'][0])) if e['loc'] else PREFIX + '*'}: {e['msg']}" for e in err.errors()]
    except RuntimeError as err:  # DIGIT_COMPARE_DEVICE=cuda without a usable GPU
        problems.append(str(err))
    if problems:
        raise ValueError("; ".join(problems))
    return settings


def describe(settings: Settings) -> dict[str, t.Any]:
    """What /info reports of the settings, grouped as before (``batching``, ``limits``)."""
    return {
        "device_setting": settings.device, "layout": settings.layout, "workers": settings.workers,
        "access_log": settings.access_log, "ort_spinning": settings.ort_spinning,
        "model_metrics": settings.model_metrics,
        "batching": {"max_batch_size": settings.max_batch_size, "max_latency_ms": settings.max_latency_ms,
                     "batch_endpoint_chunk": settings.max_batch_size,
                     "batch_endpoint_chunks_in_flight": BATCH_IN_FLIGHT,
                     "single_pair_calls_in_flight": SINGLE_PAIR_CALLS_IN_FLIGHT,
                     "max_waiting_single_pairs": MAX_WAITING_BATCHES * settings.max_batch_size,
                     "scorer_threads": settings.scorer_threads},
        "limits": {"max_pairs_per_request": settings.max_pairs, "max_json_pairs_per_request": JSON_MAX_PAIRS,
                   "max_request_bytes": settings.max_request_bytes, "max_json_request_bytes": JSON_MAX_BYTES,
                   "body_idle_timeout_s": settings.body_idle_timeout_s, "body_timeout_s": settings.body_timeout_s,
                   "request_timeout_s": REQUEST_TIMEOUT_S},
    }


# ----------------------------------------------------------------------------- fixed values, each with its reason

#: compare_batch's JSON ``pairs``: at most this many (413 above, naming the .npz form). Measured (``python -m
#: bench.json_cap``, docs/speed.md): 1,000 pairs of integer pixels are a 6.9 MiB body, 0.11 s of ``json.loads`` and
#: 0.05 s to uint8 pairs, 30 MB at the peak; 10,000 would be 69 MiB, 1.8 s and 300 MB. The course's .npz upload
#: carries the large batches: it unpacks straight into uint8 arrays.
JSON_MAX_PAIRS = 1_000
#: ... and at most this many bytes of JSON (1,000 pairs of integers are 6.9 MiB; a body this size parses in 0.3 s).
JSON_MAX_BYTES = 16 * 1024 * 1024
#: compare_batch keeps at most this many chunks (of max_batch_size pairs) in the scorer's queue at once: two keep
#: the scorer busy while a chunk travels, and leave room for single requests in between.
BATCH_IN_FLIGHT = 2
#: Single pairs go to the scorer at most this many calls at a time; pairs that arrive meanwhile go together in the
#: next call (+34% answers/s and a lower p99 at 64 clients against one call per pair, README "Speed").
SINGLE_PAIR_CALLS_IN_FLIGHT = 2
#: At most this many full batches of single pairs wait (more are refused with 503 at once): a few seconds of
#: inference on 2 CPU cores.
MAX_WAITING_BATCHES = 16
#: Whole request (BentoML's traffic timeout, 504 after it): 10,000 pairs take ~50 s at the ~200 pairs/s of this
#: 2-core CPU under load, two at once ~105 s.
REQUEST_TIMEOUT_S = 300
#: On SIGTERM the scorer keeps serving the API workers' last calls for at most this long (serving/shutdown.py),
#: keeping the whole stop within 10 s (a pod's default grace period is 30 s).
SCORER_DRAIN_LIMIT_S = 8.0
#: The scorer's, for one inference call.
SCORER_TIMEOUT_S = 60
#: Images decoded at the same time per worker (bounds memory: a 25 MP RGBA image is 100 MB decoded).
DECODE_CONCURRENCY = 2
