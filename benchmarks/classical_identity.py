"""Whether the classical engine of this checkout restores exactly what an earlier commit's does: restored frames
and mattes compared bit for bit on the shared real films (12 frames of each, whole range; a chunk pair of one
film; deflicker on one) and on real film resized to 1280x720 and 2048x1536. For speed work, which must not
change a bit: run it against the commit the work started from.

    python benchmarks/classical_identity.py --reference COMMIT [--quick]
    (FRDM_SHARED=/path/to/shared when the shared folder is not beside the checkout)

Both engines run in this process (the earlier one imported from git under another name, as
``classical_speed.py --reference`` does). Exits 1 and names the frames that differ when any does.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from classical_speed import FILM_DIR, reference_engine  # noqa: E402

from frdm.commands.tuning import tune_process  # noqa: E402
from frdm.engine import params as P  # noqa: E402
from frdm.engine.classical import ClassicalRestorer  # noqa: E402
from frdm.engine.restorer import Clip  # noqa: E402

REAL_FILM = os.path.dirname(FILM_DIR)


def film(name: str, start: int, count: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """``count`` frames of a shared real film from ``start`` (resized to ``size``), (T, H, W, 3) float32."""
    files = sorted(glob.glob(os.path.join(REAL_FILM, name, "*.png")))[start : start + count]
    if len(files) < count:
        raise SystemExit(f"classical_identity: {name} has fewer than {start + count} frames in {REAL_FILM}")
    out = []
    for f in files:
        rgb = cv2.imread(f)[..., ::-1]
        out.append(rgb if size is None else cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC))
    return np.stack(out).astype(np.float32) / 255.0


def cases(quick: bool) -> list[tuple[str, np.ndarray, list[int], dict]]:
    """(name, frames, targets, params): what both engines restore."""
    names = sorted(d for d in os.listdir(REAL_FILM) if os.path.isdir(os.path.join(REAL_FILM, d)))
    out = []
    for name in names[:1] if quick else names:
        out.append((name, film(name, 30, 12), list(range(12)), {}))
    frames = film(names[0], 30, 12)
    out.append((f"{names[0]} chunk 0-5", frames[:8], list(range(6)), {}))
    out.append((f"{names[0]} chunk 6-11", frames[4:], list(range(2, 8)), {}))
    out.append(
        (f"{names[1 % len(names)]} deflicker", film(names[1 % len(names)], 10, 8), list(range(8)), {"deflicker": 0.5})
    )
    if not quick:
        out.append(("2048x1536", film(names[2 % len(names)], 20, 6, (2048, 1536)), list(range(1, 5)), {}))
        out.append(("1280x720", film(names[3 % len(names)], 20, 6, (1280, 720)), list(range(6)), {}))
    return out


def restore(engine: type, frames: np.ndarray, targets: list[int], params: dict) -> list:
    clip = Clip(frames, list(range(len(frames))), targets)
    return list(engine().restore(clip, P.validate(params)))


def _differing(a, b) -> list[str]:
    """The parts of two RestoredFrames that are not the same to the bit."""
    out = []
    for part in ("image", "matte", "base"):
        x, y = getattr(a, part), getattr(b, part)
        if not ((x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))):
            out.append(part)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="the commit whose classical engine this one must equal")
    ap.add_argument("--quick", action="store_true", help="one film, its chunks and deflicker; no large frames")
    args = ap.parse_args()
    tune_process()  # as frdm restore runs the engine (no bit depends on the pool: tests/test_classical_speed.py)
    before = reference_engine(args.reference)
    differ, compared, made = [], 0, {}
    for name, frames, targets, params in cases(args.quick):
        made[name] = restore(ClassicalRestorer, frames, targets, params)
        for old, new in zip(restore(before, frames, targets, params), made[name]):
            compared += 1
            differ += [f"{name} frame {new.frame_number} {part}" for part in _differing(old, new)]
        print(f"{name}: {len(targets)} frames compared", flush=True)
    # Chunked == whole range: the two chunks give the whole run's frames (chunk 6-11 counts from its frame 4).
    whole = made[next(iter(made))]
    for name, offset in ((n, 0 if n.endswith("0-5") else 4) for n in made if " chunk " in n):
        for new in made[name]:
            differ += [
                f"{name} frame {new.frame_number} {part} (against the whole range)"
                for part in _differing(whole[new.frame_number + offset], new)
            ]
    if differ:
        print(f"{len(differ)} of {compared} frames differ from {args.reference}:", *differ, sep="\n  ")
        raise SystemExit(1)
    print(f"all {compared} frames (images, mattes, deflicker bases) equal {args.reference}'s bit for bit")


if __name__ == "__main__":
    main()
