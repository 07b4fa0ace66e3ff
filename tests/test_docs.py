"""Documentation generated from code stays current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_parameter_reference_matches_the_schema():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_params_doc.py"), "--check"], timeout=60)
    assert proc.returncode == 0, "docs/parameters.md is stale: run `python scripts/gen_params_doc.py`"
