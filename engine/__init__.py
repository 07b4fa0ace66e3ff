"""The restorer: frames, colour, blending, the classical and the diffusion restorers, data, training, metrics.

Nothing here is imported eagerly: ``frdm.engine.params`` and ``frdm.engine.errors`` must stay importable
without torch (the host side uses them).
"""
