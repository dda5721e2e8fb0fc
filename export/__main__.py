"""Export the trained weights to ONNX (one file each + the fused graph) and check parity.

    python -m export [--out models] [--profile default] [--data data]

Reads ``OUT/weights/NAME/weights.safetensors`` for the registered models and writes
``OUT/onnx/NAME.onnx`` and ``OUT/ensemble.onnx`` (``export.pipeline``). The parity check runs on
every export; a failure stops with the numbers.

When OUT already has a manifest.json (``models/``, or a finished run), the manifest's hashes, stackers and
reference predictions belong to the graphs it records: the export then runs into a scratch folder and
leaves OUT as it is, saying whether the graphs came out byte-identical or differ (exit 1; re-stack with
``python -m training.run_all --out OUT``, which keeps the trained models).
"""

from __future__ import annotations

import argparse
import sys
import time

from ensemble.layout import ArtifactLayout
from export.onnx_export import ParityError
from export.pipeline import ManifestMismatch, export_all, reexport_recorded
from training.profiles import PROFILES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models", help="folder with weights/ (default: models)")
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    parser.add_argument("--data", default="data", help="data folder, for the parity pairs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    recorded = ArtifactLayout(args.out).manifest.is_file()
    try:
        report = (reexport_recorded if recorded else export_all)(args.out, args.profile, args.data)
    except (ParityError, ManifestMismatch) as err:
        print(f"export stopped: {err}", file=sys.stderr)
        return 1
    if recorded:
        print(f"re-exported {len(report['models'])} models: byte-identical to the graphs {args.out}/manifest.json "
              "records; nothing changed")
        return 0
    print(f"exported {len(report['models'])} models and {ArtifactLayout(args.out).fused} in "
          f"{time.perf_counter() - start:.1f}s; parity on {report['pairs']} pairs: max |ORT - torch| = "
          f"{report['worst']:.2e}, fused vs single = {report['fused']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
