"""A process that runs the engine (``frdm serve``, ``frdm restore``, the benchmarks) tuned once, at its start:
glibc's malloc for frame-sized buffers allocated and freed all the time, and cv2's thread pool beside the
classical engine's own threads. One place for the settings and the calls (``tune_process``); a library that
embeds the engine keeps its own settings, as nothing here runs on import or in a constructor."""

from __future__ import annotations

import os

#: glibc's malloc (mallopt parameters): every received frame is a buffer of a frame's size, and a request's
#: buffers are freed together when its job is done; by default glibc then hands that memory back (more than
#: twice its adaptive mmap threshold free at the heap's top) and the next request's frames land on fresh pages
#: that the kernel zeroes on first touch. Buffers up to the largest threshold glibc allows (32 MB: a 2K RGBA
#: half frame is 25 MB) are taken from the heap, which is not handed back until this much lies free at its
#: top: the next request reuses the pages the last one touched.
#: Measured here: the 2K pass-through round trip ~78 -> ~66 ms CPU a frame (client and server), the process
#: keeping its peak heap. ``frdm restore`` (2K half EXR, 24 frames, classical, 4 alternating pairs under load):
#: CPU 33.8-42.0 -> 32.1-41.4 s (median -6%), peak RSS 1.56-1.71 -> 1.75-1.86 GB (median +8%): its decoded
#: frames and windows are frame-sized too; measured again on the SpotLess benchmark's 24 2K frames: peak RSS
#: 1692 MiB tuned against 1272 untuned, user CPU 23.8 against 25.8 s. Over the 1.5 GB a 2K restore may hold,
#: so ``frdm restore`` keeps glibc's defaults (``tune_process(malloc=False)``); the server, whose requests come
#: and go, keeps the tuning. A value the user set (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) is kept.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": (-3, 32 << 20), "MALLOC_TRIM_THRESHOLD_": (-1, 1 << 30)}


def tune_malloc() -> bool:
    """Apply ``MALLOC_SETTINGS`` to this process (glibc only; elsewhere nothing happens): whether all were set."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): the allocator's own defaults
        return False
    done = True
    for env, (param, value) in MALLOC_SETTINGS.items():
        if env not in os.environ:
            done = mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 and done
    return done


def tune_process(malloc: bool = True) -> None:
    """What ``frdm restore`` and ``frdm serve`` call before they read anything: ``tune_malloc`` (unless
    ``malloc`` is False: see ``MALLOC_SETTINGS`` for why restore says so) and, where the engine is installed,
    cv2's pool (``engine/classical/restorer.tune_cv2_threads``)."""
    if malloc:
        tune_malloc()
    try:
        from frdm.engine.classical.restorer import tune_cv2_threads
    except ImportError:  # the host side alone (no cv2): nothing of the engine runs in this process
        return
    tune_cv2_threads()
