"""The diffusion engine: HaineiFRDM with patch-consistent inference (paper Sec. 3.2).

``frdm.engine.restorer.create_restorer("diffusion", weights=DIR)`` imports ``DiffusionRestorer`` from here.
"""

from frdm.engine.diffusion.restorer import DiffusionRestorer

__all__ = ["DiffusionRestorer"]
