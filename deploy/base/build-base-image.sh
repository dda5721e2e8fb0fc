#!/usr/bin/env bash
# The base image the Bento's image is built FROM (bentofile.yaml: docker.base_image), tagged $TAG in $ENGINE's
# local storage. `make base-image` runs it; usage: build-base-image.sh ENGINE TAG PYTHON
#
# What BentoML 1.4's Dockerfile template needs from a base image: bash, python3.11 (the Bento's venv is made from
# it), uv >= 0.13.4, useradd, no existing `bentoml` user; libgomp1 for LightGBM. Where a registry serves Python's
# official image, it is that image plus libgomp1 and uv; where none answers (these machines reach only PyPI, apt and
# npm), it is a Debian bookworm root made by debootstrap from Debian's own packages and imported as an image.
#
# Cached: the image carries the sha256 of this recipe (this script and uv-requirements.txt) as a label, and is
# rebuilt only when the recipe changes or FORCE=1 (to take Debian's newer security fixes). Either way the Bento's
# image is built FROM the tag, so nothing else changes. BASE_SOURCE=registry|debootstrap forces one way.
set -euo pipefail

ENGINE=${1:?engine (podman or docker)}
TAG=${2:?image tag}
PYTHON=${3:?python with pip (the project venv)}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${BASE_IMAGE_WORKDIR:-build/base-image}
REGISTRY_IMAGE=docker.io/library/python:3.11-slim-bookworm
MIRROR=http://deb.debian.org/debian
LABEL=org.digit-compare.base-recipe

recipe=$(cat "$HERE/build-base-image.sh" "$HERE/uv-requirements.txt" | sha256sum | cut -c1-16)
current=$("$ENGINE" image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$TAG" 2>/dev/null || true)
if [ "$current" = "$recipe" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "base image $TAG is up to date (recipe $recipe)"
    exit 0
fi
echo "building base image $TAG (recipe $recipe)"
rm -rf "$WORK"
mkdir -p "$WORK"

# uv from PyPI, hash-checked: its binary goes to /usr/local/bin in either base.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
    --python-version 3.11 --require-hashes -r "$HERE/uv-requirements.txt" -d "$WORK/uv"
"$PYTHON" - "$WORK/uv" <<'EOF'
import sys, zipfile
from pathlib import Path
folder = Path(sys.argv[1])
(wheel,) = folder.glob("uv-*.whl")
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".data/scripts/uv"))
    (folder / "uv").write_bytes(z.read(name))
(folder / "uv").chmod(0o755)
EOF

from_registry() {
    # A short probe: on a machine without a registry the name lookup fails at once.
    timeout 300 "$ENGINE" pull --quiet "$REGISTRY_IMAGE" >/dev/null 2>&1 || return 1
    cat > "$WORK/Containerfile" <<EOF
FROM $REGISTRY_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
COPY uv/uv /usr/local/bin/uv
LABEL $LABEL=$recipe
EOF
    "$ENGINE" build --tag "$TAG" --file "$WORK/Containerfile" "$WORK"
    echo "base image $TAG: $REGISTRY_IMAGE + libgomp1 + uv"
}

from_debootstrap() {
    local root="$WORK/rootfs"
    # minbase: essential packages and apt only. python3.11 for the venv, libgomp1 for LightGBM, ca-certificates
    # for apt and uv over https.
    debootstrap --variant=minbase --include=python3.11,libgomp1,ca-certificates bookworm "$root" "$MIRROR"
    cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    # The security and point-release fixes published since bookworm's release.
    chroot "$root" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get upgrade -y -qq
    chroot "$root" apt-get clean
    # Lean: no documentation, manuals or translations, now or from packages installed later in the image.
    cat > "$root/etc/dpkg/dpkg.cfg.d/01-lean" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/usr/share/{man,info}/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/log/*.log "$root"/var/cache/debconf/*-old "$root/etc/resolv.conf" "$root/etc/hostname"
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    install -m 0755 "$WORK/uv/uv" "$root/usr/local/bin/uv"
    tar --numeric-owner -C "$root" -c . | "$ENGINE" import \
        --change "LABEL $LABEL=$recipe" --change "ENV LANG=C.UTF-8" \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
    echo "base image $TAG: Debian bookworm (debootstrap $MIRROR) + python3.11 + libgomp1 + uv"
}

case "${BASE_SOURCE:-auto}" in
    registry) from_registry ;;
    debootstrap) from_debootstrap ;;
    auto) from_registry || { echo "no registry serves $REGISTRY_IMAGE: building from Debian's packages"; from_debootstrap; } ;;
    *) echo "BASE_SOURCE must be auto, registry or debootstrap" >&2; exit 2 ;;
esac
rm -rf "$WORK"
