"""The host side imports in a compositor's Python: numpy, pyzmq and msgpack only (no torch, no OpenImageIO,
no OpenCV). Checked in a fresh interpreter where those packages cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HOST_MODULES = [
    "frdm",
    "frdm.plugin",
    "frdm.engine.params",
    "frdm.engine.depends",
    "frdm.engine.atomic",
    "frdm.engine.halves",
    "frdm.engine.errors",
    "frdm.cli",
]
OPTIONAL_HOST_MODULES = [
    "frdm.server.protocol",
    "frdm.server.client",
    "frdm.server.exrfile",
    "frdm.plugin.node",
    "frdm.plugin.farm",
]
# Nuke's own modules exist only inside Nuke: these import with tests/fake_nuke.py standing in for ``nuke``.
NUKE_HOST_MODULES = [
    "frdm.plugin.nuke",
    "frdm.plugin.nuke.gizmo",
    "frdm.plugin.nuke.adapter",
    "frdm.plugin.nuke.batch",
]
BLOCKED = ["torch", "OpenImageIO", "cv2", "diffusers", "transformers", "av", "scipy"]

REPO = Path(__file__).resolve().parent.parent


def _present(module: str) -> bool:
    rel = module.replace("frdm.", "", 1).replace(".", "/")
    return (REPO / f"{rel}.py").exists() or (REPO / rel / "__init__.py").exists()


def _import_blocked(module: str, fake_nuke: bool = False) -> subprocess.CompletedProcess:
    nuke = (
        f"sys.path.insert(0, {str(REPO / 'tests')!r}); import fake_nuke; sys.modules['nuke'] = fake_nuke"
        if fake_nuke
        else ""
    )
    code = textwrap.dedent(
        f"""
        import importlib.abc, sys
        {nuke}
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed in the host's Python")
        sys.meta_path.insert(0, Block())
        import {module}
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
        assert not heavy, heavy
        print("ok")
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module", HOST_MODULES + OPTIONAL_HOST_MODULES)
def test_host_module_imports_without_torch(module):
    if module in OPTIONAL_HOST_MODULES and not _present(module):
        pytest.skip(f"{module} is not part of this build yet")
    proc = _import_blocked(module)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("module", NUKE_HOST_MODULES)
def test_nuke_adapter_imports_without_torch(module):
    proc = _import_blocked(module, fake_nuke=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_blocker_really_blocks():
    proc = _import_blocked("frdm.engine.classical")
    assert proc.returncode != 0 and "cv2 is not installed" in proc.stderr


def test_cli_help_without_the_engine():
    code = (
        "import importlib.abc, sys\n"
        f"B={BLOCKED!r}\n"
        "class K(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] in B: raise ImportError(n)\n"
        "sys.meta_path.insert(0, K())\n"
        "from frdm.cli import main\n"
        "sys.exit(main(['--help']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "restore" in proc.stdout, proc.stderr
