"""FRDM for Nuke: init.py (no UI; also runs in `nuke -t` on the farm).

Put this folder on NUKE_PATH. It makes the gizmo and its icon findable and, if FRDM was installed with
`pip install --target <dir>` for Nuke's Python, puts that folder on sys.path (FRDM_PYTHONPATH, or a
`python` folder next to this file). See docs/nuke.md.
"""

import os
import sys

import nuke

_HERE = os.path.dirname(os.path.abspath(__file__))

for _path in [os.environ.get("FRDM_PYTHONPATH", ""), os.path.join(_HERE, "python")]:
    for _entry in _path.split(os.pathsep):
        if _entry and os.path.isdir(_entry) and _entry not in sys.path:
            sys.path.append(_entry)

nuke.pluginAddPath(os.path.join(_HERE, "icons"))
