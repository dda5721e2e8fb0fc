#!/usr/bin/env bash
# What an image weighs and what takes the space: `make image` prints it after each build (docs/deploy.md records
# it). Usage: image-size.sh ENGINE IMAGE
set -euo pipefail
ENGINE=${1:?engine}
IMAGE=${2:?image}
bytes=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
echo "$IMAGE: $((bytes / 1000000)) MB"
echo "largest layers:"
# podman writes "427 MB", docker "427MB": both to a plain number of MB for sorting.
"$ENGINE" history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" \
    | awk -F'\t' '{ n = $1 + 0; u = $1; gsub(/[0-9. ]/, "", u);
                    mb = (u == "GB") ? n * 1000 : (u == "MB") ? n : (u == "kB") ? n / 1000 : n / 1e6;
                    if (mb >= 1) printf "%8.1f MB  %s\n", mb, substr($2, 1, 100) }' \
    | sort -rn | head -4 | sed 's/^/  /'
echo "largest folders (MB):"
"$ENGINE" run --rm --user 0 --entrypoint /bin/sh "$IMAGE" -c \
    'du -sm /usr /app/.venv "$BENTO_PATH" 2>/dev/null; cd /app/.venv/lib/python3.*/site-packages && du -sm * | sort -rn | head -8' \
    | sed 's/^/  /'
