"""``models/manifest.json``: the contract between training and serving.

It names every artifact with its sha256, the input spec, the base models in order, the stacking
features, the data the models were trained on, the measured metrics and the package versions.
Training writes it (``write_manifest``); the run time reads it and refuses any artifact it opens whose bytes
do not match (``read_manifest`` + ``verify_artifact``): ``Ensemble.load`` opens the fused graph it runs and
the two stackers. The per-model ONNX files, the weights and the reference predictions are recorded too,
but serving never opens them (the Bento does not ship them); ``verify_recorded_artifacts`` (``python -m
ensemble verify``) checks every recorded file.

Optional blocks are read where they are defined, each tolerating manifests written before it existed: ``priors``
(``ensemble.priors.read_frequencies``), ``student`` (``ensemble.student``), ``reference`` (the monitoring's reference
statistics, ``ensemble.reference.read_reference``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ensemble.atomic import atomic_write_text

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SERVING_ROLES = ("fused", "lightgbm", "logreg")  # what Ensemble.load needs; the Bento ships these
REQUIRED_KEYS = ("format_version", "models", "artifacts", "input", "features", "best_single")


class ManifestError(ValueError):
    """A missing, malformed or mismatching manifest or artifact; the message names the file."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_entry(models_dir: Path, path: Path) -> dict:
    """The manifest entry of one file: its path relative to the models folder, size and sha256."""
    return {"file": path.relative_to(models_dir).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def read_manifest(models_dir: str | os.PathLike) -> dict:
    path = Path(models_dir) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (train and export with `python -m training.run_all`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object at the top level")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing field(s) {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {manifest['format_version']!r}, this code reads {FORMAT_VERSION}")
    roles = manifest["artifacts"]
    if not isinstance(roles, dict) or any(not isinstance(roles.get(r), dict) or "file" not in roles[r]
                                          or "sha256" not in roles[r] for r in SERVING_ROLES):
        raise ManifestError(f"{path}: 'artifacts' must give file and sha256 for {', '.join(SERVING_ROLES)}")
    if not isinstance(manifest["models"], list) or not all(isinstance(m, dict) and "name" in m
                                                           for m in manifest["models"]):
        raise ManifestError(f"{path}: 'models' must be a list of objects with a 'name'")
    return manifest


def verify_artifact(models_dir: str | os.PathLike, manifest: dict, role: str) -> Path:
    """The path of an artifact whose bytes match the manifest's sha256; ManifestError otherwise."""
    entry = manifest["artifacts"].get(role)
    if entry is None:
        raise ManifestError(f"{Path(models_dir) / MANIFEST}: no artifact {role!r}")
    path = Path(models_dir) / entry["file"]
    if not path.is_file():
        raise ManifestError(f"{path}: missing (listed in the manifest as {role!r})")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ManifestError(f"{path}: sha256 {actual[:12]}... does not match the manifest's {entry['sha256'][:12]}... "
                            "(the file was changed or corrupted)")
    return path


def write_manifest(models_dir: str | os.PathLike, manifest: dict) -> Path:
    """Write the manifest atomically."""
    path = Path(models_dir) / MANIFEST
    atomic_write_text(path, json.dumps({"format_version": FORMAT_VERSION, **manifest}, indent=2, default=str) + "\n")
    return path


def verify_serving_artifacts(models_dir: str | os.PathLike) -> dict:
    """The manifest, once every artifact serving needs exists and matches its sha256 (ManifestError if not).

    Cheap (hashes a few files, opens nothing), so the service runs it when its module is imported: a
    refused model then stops ``bentoml serve`` at once, before any worker starts (and restarts forever).
    """
    manifest = read_manifest(models_dir)
    # Every fused graph the manifest lists too (the int8 one where shipped): Ensemble.load may pick it.
    fused = [role for role in manifest["artifacts"] if role.startswith("fused") and role not in SERVING_ROLES]
    for role in (*SERVING_ROLES, *fused):
        verify_artifact(models_dir, manifest, role)
    return manifest


def verify_recorded_artifacts(models_dir: str | os.PathLike) -> list[str]:
    """Every artifact the manifest records, checked against its sha256 (ManifestError naming the first file
    that is missing or differs); the roles checked, in the manifest's order."""
    manifest = read_manifest(models_dir)
    for role in manifest["artifacts"]:
        verify_artifact(models_dir, manifest, role)
    return list(manifest["artifacts"])
