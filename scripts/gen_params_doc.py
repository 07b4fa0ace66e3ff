"""Write docs/parameters.md from the one schema (engine/params.py). tests/test_docs.py checks it is current."""

from __future__ import annotations

import sys
from pathlib import Path

from frdm.engine.params import SCHEMA, STAGES

HEADER = """# Parameters

Generated from `engine/params.py` by `python scripts/gen_params_doc.py`; do not edit by hand.
The same declaration drives the CLI flags (`--name-with-dashes`), the Nuke knobs, presets, wire validation and
the cache key. *Stage* is the earliest pipeline step a parameter changes ({stages}): a cache keyed by the
`fill` stage survives a change of a `blend` parameter, so changing one knob re-runs only what it affects.
"""


def render() -> str:
    out = [HEADER.format(stages=" -> ".join(STAGES[:-1]))]
    for group in dict.fromkeys(p.group for p in SCHEMA):
        out.append(f"\n## {group}\n")
        out.append("| name | type | default | range / choices | engines | stage | what it does |")
        out.append("| --- | --- | --- | --- | --- | --- | --- |")
        for p in SCHEMA:
            if p.group != group:
                continue
            if p.choices:
                rng = ", ".join(p.choices)
            elif p.minimum is not None or p.maximum is not None:
                rng = f"{p.minimum} .. {p.maximum}"
            else:
                rng = ""
            out.append(
                f"| `{p.name}` | {p.kind} | `{p.default!r}` | {rng} | {', '.join(p.engines)} | {p.stage} | {p.help} |"
            )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "parameters.md"
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == text else 1)
    target.write_text(text)
    print(f"wrote {target}")
