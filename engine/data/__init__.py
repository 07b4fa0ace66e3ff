"""Training and evaluation data: procedural film-defect synthesis with exact masks, fast-motion clips with
known motion, defect masks from (degraded, restored) pairs, and the on-disk restoration dataset.

Submodules import numpy and OpenCV only; ``dataset`` imports torch.
"""
