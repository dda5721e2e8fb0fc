"""Promote a finished run (a staging folder) to a models folder: only what serving and verification need.

    python -m training.promote STAGING --to models [--keep-staging]

STAGING is a folder ``python -m training.run_all --out STAGING`` has trained, exported and stacked (it has a
``manifest.json``). The models folder receives, checked against the staging manifest's sha256 first:

- what serving opens: the fused graph (and its int8 twin where the manifest lists one) and both stackers;
- what ``python -m ensemble verify`` and the rest of the tooling read: every model's weights with their
  ``history.json`` and ``curves.png``, the reference predictions, ``REPORT.md`` with its figures and
  ``training_results.json``;
- the manifest, written last and atomically, listing exactly the files copied.

Left behind: the per-model ONNX graphs (``onnx/NAME.onnx``). The fused graph holds every one of them, serving
never opens them, and ``python -m export`` regenerates them from the weights (checking that the fused graph comes
out byte-identical), so committing them would only double the folder's size. Also left: checkpoints and anything
else a run keeps for itself.

Then the staging folder lets go of what was promoted: every file copied into the models folder (and the staging
manifest) is removed from it where its bytes are still those copied, so git does not keep a second copy of each
weights file under ``staging/``. Anything else stays: the per-model graphs, checkpoints, and the finished models of a
retrain that is not done yet (``--keep-staging`` removes nothing).

The models folder is replaced as a whole: it is assembled beside the target, then swapped in by two renames, so
a reader sees the old folder or the new one, never a mix, and no file of the old ensemble stays behind (a distilled
student belongs to the ensemble it learnt from; distil again and install it with ``python -m export.student``).
Only the old folder's reports on the data (``DATA_REPORTS``: the realism gate's) are carried over.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

from ensemble.layout import ArtifactLayout
from ensemble.manifest import MANIFEST, ManifestError, artifact_entry, read_manifest, verify_artifact, write_manifest

#: Manifest roles a promoted folder leaves out: serving never opens them and export regenerates them from the weights.
LEFT_OUT_PREFIXES = ("onnx:",)
#: Reports on the data, not on an ensemble (``python -m training.realism --out models/report``): the new folder keeps
#: the old folder's, since the same data trained both (its fingerprint is in the run key).
DATA_REPORTS = ("report/realism.md", "report/realism.json")


def kept_roles(manifest: dict) -> list[str]:
    """The manifest roles a promoted folder keeps, in the manifest's order."""
    return [role for role in manifest["artifacts"] if not role.startswith(LEFT_OUT_PREFIXES)]


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


def _extras(staging: ArtifactLayout, names: list[str]) -> list[Path]:
    """Files a models folder keeps beside the recorded artifacts (reports and histories: small, for people)."""
    extras = [staging.report, staging.figures, staging.training_results]
    for name in names:
        extras += [staging.history(name), staging.curves(name)]
    return [path for path in extras if path.exists()]


def assemble(staging: Path, target: Path) -> dict:
    """Build a promoted models folder at ``target`` (which must not exist) from ``staging``; its manifest."""
    manifest = read_manifest(staging)
    layout = ArtifactLayout(staging)
    names = [m["name"] for m in manifest["models"]]
    roles = kept_roles(manifest)
    sources = {role: verify_artifact(staging, manifest, role) for role in roles}  # every byte checked first
    target.mkdir(parents=True)
    for role, source in sources.items():
        _copy(source, target / manifest["artifacts"][role]["file"])
    for path in _extras(layout, names):
        _copy(path, target / path.relative_to(staging))
    promoted = dict(manifest)
    promoted.pop("format_version", None)  # write_manifest adds its own
    promoted["artifacts"] = {role: artifact_entry(target, target / manifest["artifacts"][role]["file"])
                             for role in roles}
    # The per-model graphs are not in this folder: a model entry names no file.
    promoted["models"] = [{k: v for k, v in m.items() if k != "file"} for m in manifest["models"]]
    profile = manifest.get("training", {}).get("profile", "PROFILE")
    promoted["promoted"] = {
        "from": str(staging), "left_out": [r for r in manifest["artifacts"] if r not in roles],
        "regenerate": f"mkdir G && cp -r FOLDER/weights G/ && python -m export --out G --profile {profile} --data DATA",
        "check": f"python -m export --out FOLDER --profile {profile} --data DATA (the fused graph, byte-identical)"}
    write_manifest(target, promoted)
    return promoted


def promote(staging: str | Path, target: str | Path, keep_staging: bool = False) -> dict:
    """Replace ``target`` (absent, empty, or a models folder with a manifest) by the promoted ``staging``, then remove
    from ``staging`` what it promoted (``release_promoted``) unless ``keep_staging``."""
    staging, target = Path(staging), Path(target)
    if target.exists() and any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise ManifestError(f"{target}: not empty and not a models folder (no {MANIFEST}); refusing to replace it")
    if target.resolve() == staging.resolve():
        raise ManifestError(f"{target}: the staging folder itself; promote into another folder")
    fresh = target.with_name(f".{target.name}.promoting")
    old = target.with_name(f".{target.name}.replaced")
    for leftover in (fresh, old):  # from an interrupted promotion: nothing in them is needed
        shutil.rmtree(leftover, ignore_errors=True)
    staging_manifest = (staging / MANIFEST).read_bytes() if (staging / MANIFEST).is_file() else None
    try:
        manifest = assemble(staging, fresh)
        copied = [p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file() and p.name != MANIFEST]
        for report in DATA_REPORTS:
            if (target / report).is_file() and not (fresh / report).exists():
                _copy(target / report, fresh / report)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if target.exists():
        target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    if not keep_staging:
        release_promoted(staging, target, copied, staging_manifest)
    return manifest


def release_promoted(staging: Path, target: Path, copied: list[Path], staging_manifest: bytes | None) -> list[Path]:
    """Remove from ``staging`` each promoted file (``copied``: paths relative to both folders) whose bytes still equal
    its copy in ``target``, its manifest if it still reads ``staging_manifest``, and the folders left empty. A file
    changed since (a retrain writing there) stays. Returns what was removed."""
    removed = [staging / rel for rel in copied
               if (staging / rel).is_file() and filecmp.cmp(staging / rel, target / rel, shallow=False)]
    if staging_manifest is not None and (staging / MANIFEST).is_file() \
            and (staging / MANIFEST).read_bytes() == staging_manifest:
        removed.append(staging / MANIFEST)
    for path in removed:
        path.unlink()
    for folder in sorted({p.parent for p in removed}, key=lambda p: len(p.parts), reverse=True):
        while folder != staging and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    return removed


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.promote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("staging", metavar="STAGING", help="a trained, exported and stacked run_all --out folder")
    parser.add_argument("--to", required=True, metavar="MODELS_DIR", help="the models folder to replace (e.g. models)")
    parser.add_argument("--keep-staging", action="store_true",
                        help="leave the promoted files in STAGING too (by default they are removed from it)")
    args = parser.parse_args(argv)
    try:
        manifest = promote(args.staging, args.to, keep_staging=args.keep_staging)
    except (FileNotFoundError, ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = folder_bytes(Path(args.to))
    print(f"promoted {args.staging} to {args.to}: {len(manifest['artifacts'])} recorded files, {size / 1e6:.1f} MB "
          f"(left out, regenerable from the weights: {len(manifest['promoted']['left_out'])} per-model graphs); "
          f"check with: python -m ensemble --models {args.to} verify"
          + ("" if args.keep_staging else f"; the promoted files were removed from {args.staging}"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
