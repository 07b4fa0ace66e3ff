"""Documentation generated from code stays current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_parameter_reference_matches_the_schema():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_params_doc.py"), "--check"], timeout=60)
    assert proc.returncode == 0, "docs/parameters.md is stale: run `python scripts/gen_params_doc.py`"


def test_protocol_doc_names_the_protocol_version_everywhere():
    import re

    from frdm.server.protocol import PROTOCOL_VERSION

    text = (REPO / "docs" / "protocol.md").read_text()
    pattern = r"protocol, version (\d+)|protocol version,? `(\d+)`|`protocol` \((\d+)\)|protocol version \((\d+)\)"
    said = ["".join(m) for m in re.findall(pattern, text)]
    assert len(said) >= 4 and set(said) == {str(PROTOCOL_VERSION)}, said
