#!/usr/bin/env bash
# Create .venv and install FRDM with the engine, farm and dev extras. Idempotent; offline-safe once the
# registries have been reached once. torch is pinned to the CPU build that lies on the build machines' disk;
# on a GPU workstation set FRDM_TORCH to the torch requirement for your CUDA (e.g. "torch==2.13.0").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -m pip install -q "${FRDM_TORCH:-torch==2.13.0}" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -m pip install -q -e ".[engine,farm,dev]" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c "import frdm.engine.frames, torch, cv2, OpenImageIO, zmq, msgpack" \
  || { echo "setup: the install is incomplete (see pip's messages above)"; exit 1; }
touch "$VENV/.installed"
