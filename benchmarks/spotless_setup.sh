#!/usr/bin/env bash
# Make the separate Python venv that runs the free peer, SpotLess (VapourSynth + MVTools + zsmooth), for
# benchmarks/spotless_vs_frdm.py. VapourSynth's PyPI wheels need Python >= 3.12, which pyenv has; FRDM's own venv
# stays as it is. Nothing of the peer is part of FRDM: it only runs as a subprocess of the benchmark.
#
#   bash benchmarks/spotless_setup.sh [VENV_DIR]
#   (default: $FRDM_PEER_VENV, else ~/.cache/frdm/spotless-venv: outside the checkout, shared by worktrees)
set -euo pipefail

VENV="${1:-${FRDM_PEER_VENV:-$HOME/.cache/frdm/spotless-venv}}"
PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
PY=""
# 3.12 first (the peer's wheels are built and tried there), then any newer 3.x.
for v in $(ls "$PYENV_ROOT/versions" 2>/dev/null | grep '^3\.12\.' | sort -V -r) \
         $(ls "$PYENV_ROOT/versions" 2>/dev/null | sort -V -r); do
    case "$v" in
        3.1[2-9].*|3.[2-9][0-9].*)
            if [ -x "$PYENV_ROOT/versions/$v/bin/python3" ]; then PY="$PYENV_ROOT/versions/$v/bin/python3"; break; fi ;;
    esac
done
if [ -z "$PY" ]; then
    echo "spotless_setup: no Python >= 3.12 under $PYENV_ROOT/versions (install one with pyenv)" >&2
    exit 1
fi
echo "spotless_setup: $PY -> $VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet vapoursynth vapoursynth-mvtools vapoursynth-zsmooth openimageio numpy
# The plugins must load, or the benchmark would fail later with a less clear message.
"$VENV/bin/python" - <<'PY'
import vapoursynth as vs
core = vs.core
missing = [ns for ns in ("mv", "zsmooth") if not hasattr(core, ns)]
if missing:
    raise SystemExit(f"spotless_setup: VapourSynth {core.core_version.release_major} loaded but not the plugin(s) {missing}")
import OpenImageIO
print(f"spotless_setup: VapourSynth R{core.core_version.release_major}, mv and zsmooth loaded, OpenImageIO {OpenImageIO.__version__}")
PY
