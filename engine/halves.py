"""Every half-float value, as float32: the one table behind fast, exact half-float conversions.

EXR half (most renders and scans) has only 65536 bit patterns, so a conversion of half data can be a look-up
of precomputed values indexed by the pattern: the wire's half -> float32 (``half_to_float32``) and the
colour curves into model space (``engine/color.py``) both index this table. Host side: numpy only, Python 3.9.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def every_half() -> np.ndarray:
    """(65536,) float32, read-only: the value of each half-float bit pattern (Inf and NaN patterns included)."""
    table = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    table.flags.writeable = False
    return table


def half_to_float32(a: np.ndarray) -> np.ndarray:
    """float16 -> float32, bit for bit what ``astype`` gives (the table is ``astype`` of every half): a look-up
    in a 256 KB table runs about twice as fast as numpy's own conversion of a 2K frame."""
    return every_half()[a.view(np.uint16)]
