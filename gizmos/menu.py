"""FRDM for Nuke: menu.py (GUI only): a Nodes toolbar entry with its icon."""

import nuke


def create_frdm_node():
    """Create an FRDM node as one undo step (the node and the knobs its onCreate adds)."""
    undo = nuke.Undo()
    undo.begin("Create FRDM")
    try:
        return nuke.createNode("FRDM")
    finally:
        undo.end()


_toolbar = nuke.menu("Nodes")
_frdm = _toolbar.addMenu("FRDM", icon="frdm.png")
_frdm.addCommand("FRDM", create_frdm_node, icon="frdm.png")
