#!/usr/bin/env bash
# Create .venv and install FRDM with the engine, farm and dev extras. Idempotent.
# torch is pinned to the CPU build that lies on the build machines' disk; on a GPU workstation set FRDM_TORCH
# to the torch requirement for your CUDA build (pip keeps an installed torch that satisfies the range).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
quiet_pip() {
  # pip's own warnings about unused local index folders are noise here; its errors are not.
  "$VENV/bin/python" -m pip install -q "$@" 2>&1 | grep -v '^WARNING: Location' || true
  return "${PIPESTATUS[0]}"
}
# tests/test_gizmo_tcl.py evaluates the gizmo with Tcl: Debian's tcl package, installed when missing (as root
# or through sudo); elsewhere a warning, and that one test says what to install.
if ! command -v tclsh >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq tcl >/dev/null; } \
    || echo "setup: warning: could not install Tcl (apt-get install tcl); the gizmo test needs tclsh"
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
quiet_pip --upgrade pip
quiet_pip "${FRDM_TORCH:-torch==2.13.0}"
quiet_pip -e ".[engine,farm,dev]"
"$VENV/bin/python" -c "import frdm.engine.frames, torch, cv2, OpenImageIO, zmq, msgpack, diffusers, transformers" \
  || { echo "setup: the install is incomplete (see pip's messages above)"; exit 1; }
# The host side in Nuke 14's Python 3.9 (tests/test_host_py39.py): the base install into a 3.9 venv, where
# pyenv has one (pip install also checks that requires-python admits 3.9).
PY39=$(ls -d "$HOME"/.pyenv/versions/3.9*/bin/python 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$PY39" ] && ! .venv-py39/bin/python -c "import frdm.plugin.node" >/dev/null 2>&1; then
  # Built aside and moved into place only once the host side imports: a failed install is never left behind
  # looking finished (the test would then fail instead of skipping).
  rm -rf .venv-py39.tmp .venv-py39
  if "$PY39" -m venv .venv-py39.tmp && .venv-py39.tmp/bin/python -m pip install -q -e . 2>&1 | grep -v '^WARNING: Location'; \
     [ "${PIPESTATUS[0]}" -eq 0 ]; then
    mv .venv-py39.tmp .venv-py39
    sed -i "s#$PWD/.venv-py39.tmp#$PWD/.venv-py39#g" .venv-py39/bin/* .venv-py39/pyvenv.cfg 2>/dev/null || true
  else
    rm -rf .venv-py39.tmp
    echo "setup: warning: no Python 3.9 host install (pip failed); tests/test_host_py39.py will skip"
  fi
fi
touch "$VENV/.installed"
