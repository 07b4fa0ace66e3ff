"""FRDM: film restoration (HaineiFRDM diffusion + a classical detect-then-restore engine).

The package maps three folders: ``frdm.plugin`` (host side, no torch), ``frdm.server`` (the inference
server and its torch-free client) and ``frdm.engine`` (the restorers). This module holds only the version.
"""

__version__ = "0.1.0"
