#!/usr/bin/env bash
# Set up the mmdet-ela stack in a virtual environment. Safe to run twice.
#
#   bash tools/install.sh            # venv at ./.venv (override with ELA_VENV=...)
#
# What it installs: torch 2.13.0, mmengine 0.10.7, mmcv 2.1.0 built from its sdist with
# ops (CUDA ops when nvcc and a CUDA torch are present), mmdet 3.3.0, scipy, pycocotools,
# and this project in editable mode. The mmcv wheel is cached under
# ${ELA_CACHE:-~/.cache/mmdet-ela}/wheels so a second run (or a second clone) reuses it.
#
# Offline machines (no package index, e.g. a GPU box with torch preinstalled):
#   ELA_WHEELHOUSE=DIR   install only from DIR (pip --no-index --find-links DIR, --no-deps):
#                        every wheel in DIR is installed first, so DIR holds the packages
#                        missing on the machine (their dependencies too) and
#                        mmcv-2.1.0.tar.gz; the linters are skipped
#   ELA_TORCH_SPEC=none  keep the torch ELA_VENV already has (e.g. ELA_VENV set to an
#                        image's own virtual environment)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ELA_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
CACHE="${ELA_CACHE:-$HOME/.cache/mmdet-ela}"
TORCH_SPEC="${ELA_TORCH_SPEC:-torch==2.13.0}"
STAMP="$VENV/.mmdet-ela-installed"

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(sha1sum "$ROOT/tools/install.sh" "$ROOT/setup.py" | sha1sum)" ]; then
  echo "[install] $VENV is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP_OPTS=()
[ -n "${ELA_WHEELHOUSE:-}" ] && PIP_OPTS=(--no-index --find-links "$ELA_WHEELHOUSE")
pip_install() {
  "$PY" -m pip install --disable-pip-version-check -q "${PIP_OPTS[@]}" "$@"
}
if [ -n "${ELA_WHEELHOUSE:-}" ]; then
  # Offline: what the wheelhouse holds, without dependency resolution (mmengine asks for
  # opencv-python; an image's opencv-python-headless gives the same cv2).
  echo "[install] offline, from $ELA_WHEELHOUSE"
  pip_install --no-deps "$ELA_WHEELHOUSE"/*.whl
  PIP_OPTS+=(--no-deps)
  # pip runs inside builds (the editable install's) look there too
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$ELA_WHEELHOUSE"
fi

echo "[install] torch, build tools and mmengine into $VENV"
[ "$TORCH_SPEC" = none ] || pip_install $TORCH_SPEC
# setuptools<82: mmcv's setup.py and mmengine's `mmdet::` config lookup import pkg_resources.
pip_install "setuptools<82" wheel ninja
pip_install mmengine==0.10.7

# mmcv 2.1.0 has only an sdist on PyPI; build it once with ops and keep the wheel.
# CUDA ops when torch is a CUDA build and nvcc is there (a GPU need not be visible).
WITH_CUDA=0
if [ -n "$("$PY" -c 'import torch; print(torch.version.cuda or "")')" ] && command -v nvcc >/dev/null 2>&1; then
  WITH_CUDA=1
fi
TAG="$("$PY" -c 'import sys, torch; print(f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}")')-$([ $WITH_CUDA = 1 ] && echo cuda || echo cpu)"
WHEELS="$CACHE/wheels/$TAG"
if ! "$PY" -c 'import mmcv, mmcv.ops' >/dev/null 2>&1 || [ "$("$PY" -c 'import mmcv; print(mmcv.__version__)')" != "2.1.0" ]; then
  if ! ls "$WHEELS"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "[install] building mmcv 2.1.0 with ops ($TAG); about 5 min on 2 cores"
    mkdir -p "$WHEELS"
    if [ $WITH_CUDA = 1 ]; then export FORCE_CUDA=1; fi
    # CFLAGS replaces the default debug flags: keep -O3 and -DNDEBUG (19 min -> 5 min, 83 MB -> 2 MB).
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" CFLAGS="-DNDEBUG -O3 -g0 -fwrapv" \
      "$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps \
      "${PIP_OPTS[@]}" -w "$WHEELS.partial" mmcv==2.1.0 \
      || { echo "[install] mmcv build failed" >&2; exit 1; }
    mv "$WHEELS.partial"/mmcv-2.1.0-*.whl "$WHEELS"/ && rm -rf "$WHEELS.partial"
  fi
  pip_install "$(ls "$WHEELS"/mmcv-2.1.0-*.whl | head -n1)"
fi

echo "[install] mmdet, scipy, pycocotools, test tools and mmdet-ela"
pip_install mmdet==3.3.0 scipy pycocotools matplotlib pytest psutil
# Linters at fixed versions, so `make lint` judges the same way everywhere.
[ -n "${ELA_WHEELHOUSE:-}" ] || pip_install flake8==7.5.0 isort==9.0.2 yapf==0.43.0
pip_install --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c 'import mmcv.ops, mmdet, mmdet_ela; print("[install] ok: mmcv", mmcv.__version__, "mmdet", mmdet.__version__)'
sha1sum "$ROOT/tools/install.sh" "$ROOT/setup.py" | sha1sum > "$STAMP"
