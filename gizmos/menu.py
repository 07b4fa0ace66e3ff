"""FRDM for Nuke: menu.py (GUI only): a Nodes toolbar entry with its icon."""

import nuke

_toolbar = nuke.menu("Nodes")
_frdm = _toolbar.addMenu("FRDM", icon="frdm.png")
_frdm.addCommand("FRDM", "nuke.createNode('FRDM')", icon="frdm.png")
