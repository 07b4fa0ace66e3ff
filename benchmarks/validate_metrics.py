"""Cross-check FRDM's SSIM, BRISQUE and NIQE against their reference implementations (docs/quality.md,
"Validation"). Not a test: the references are not FRDM dependencies. Install them in a scratch environment:

    pip install scikit-image libsvm-official            # SSIM reference; libsvm for brisque's SVR
    pip download --no-deps brisque==0.2.0 basicsr==1.4.2 # unpack both
    python benchmarks/validate_metrics.py --brisque-dir brisque_wheel_dir --basicsr-dir basicsr-1.4.2 \\
        --shared ../shared/data

Prints, per image (real film frames, a bikes frame, a Big Buck Bunny frame; clean and with noise), both
implementations' scores and the largest differences.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import types

import numpy as np


def load_basicsr_niqe(basicsr_dir: str):  # noqa: ANN201
    """basicsr's niqe() without importing basicsr (whose package import pulls torchvision)."""
    util_dir = os.path.join(basicsr_dir, "basicsr", "utils")
    spec = importlib.util.spec_from_file_location("bsr_matlab", os.path.join(util_dir, "matlab_functions.py"))
    matlab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(matlab)
    registry = types.SimpleNamespace(register=lambda: lambda f: f)
    stubs = {
        "basicsr": types.ModuleType("basicsr"),
        "basicsr.metrics": types.ModuleType("basicsr.metrics"),
        "basicsr.metrics.metric_util": types.SimpleNamespace(reorder_image=None, to_y_channel=None),
        "basicsr.utils": types.ModuleType("basicsr.utils"),
        "basicsr.utils.matlab_functions": matlab,
        "basicsr.utils.registry": types.SimpleNamespace(METRIC_REGISTRY=registry),
    }
    sys.modules.update(stubs)  # type: ignore[arg-type]
    import scipy.ndimage

    sys.modules.setdefault("scipy.ndimage.filters", scipy.ndimage)
    spec = importlib.util.spec_from_file_location(
        "bsr_niqe", os.path.join(basicsr_dir, "basicsr", "metrics", "niqe.py")
    )
    niqe_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(niqe_mod)
    return niqe_mod.niqe


def load_brisque(brisque_dir: str, shared: str):  # noqa: ANN201
    import json
    import pickle
    import tempfile

    import scipy.ndimage

    sys.modules.setdefault("scipy.ndimage.filters", scipy.ndimage)
    sys.path.insert(0, brisque_dir)
    from brisque import BRISQUE

    # brisque 0.2.0 calls float() on 1-element arrays, which NumPy 2 refuses: flatten first
    original = BRISQUE.scale_features
    BRISQUE.scale_features = lambda self, f: original(self, [float(np.ravel(v)[0]) for v in f])
    with open(os.path.join(shared, "metrics", "brisque_normalize.json")) as fh:
        norm = json.load(fh)
    pkl = os.path.join(tempfile.mkdtemp(), "normalize.pickle")
    with open(pkl, "wb") as fh:
        pickle.dump(norm, fh)
    return BRISQUE(url=False, model_path={"svm": os.path.join(shared, "metrics", "brisque_svm.txt"), "normalize": pkl})


def images(shared: str) -> dict[str, np.ndarray]:
    import cv2

    from frdm.engine.frames import open_source, read_frame

    out = {}
    films = sorted(glob.glob(os.path.join(shared, "real_film", "*", "")))
    if not films:  # the cross-check is only meaningful on the images it was run on: never a stand-in
        raise SystemExit(f"validate_metrics: no real films under {os.path.abspath(shared)}/real_film (give --shared)")
    for film in films:
        out[os.path.basename(film.rstrip("/"))[:14]] = read_frame(sorted(glob.glob(film + "*.png"))[5]).pixels[..., :3]
    out["bikes@10"] = open_source(os.path.join(shared, "clean", "bikes.mp4")).read(10).pixels
    bunny = open_source(os.path.join(shared, "clean", "bigbuckbunny.mp4")).read(30).pixels
    out["bbb@30"] = cv2.resize(bunny, (640, 360), interpolation=cv2.INTER_AREA)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--brisque-dir", help="folder holding the unpacked brisque 0.2.0 wheel (its brisque/ package)")
    ap.add_argument("--basicsr-dir", help="the unpacked basicsr 1.4.2 sdist")
    args = ap.parse_args()

    from frdm.engine.metrics import brisque, niqe, ssim
    from frdm.engine.metrics.niqe_mvg import _pristine, rgb_to_y

    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        structural_similarity = None
    ref_brisque = load_brisque(args.brisque_dir, args.shared) if args.brisque_dir else None
    ref_niqe = load_basicsr_niqe(args.basicsr_dir) if args.basicsr_dir else None
    mu, cov, window = _pristine()
    rng = np.random.default_rng(0)
    worst = {"SSIM": 0.0, "BRISQUE": 0.0, "NIQE": 0.0}
    for name, img in images(args.shared).items():
        noisy = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1).astype(np.float32)
        if structural_similarity is not None:
            ours = ssim(noisy, img)
            ref = structural_similarity(
                noisy,
                img,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=-1,
            )
            worst["SSIM"] = max(worst["SSIM"], abs(ours - ref))
            print(f"{name:15s} SSIM ours {ours:.7f} scikit-image {ref:.7f}")
        for label, x in (("clean", img), ("noisy", noisy)):
            u8 = np.round(x * 255).astype(np.uint8)
            x8 = u8.astype(np.float32) / 255
            line = f"{name:15s} {label:5s}"
            if ref_brisque is not None:
                ours, ref = brisque(x8), float(ref_brisque.score(u8))
                worst["BRISQUE"] = max(worst["BRISQUE"], abs(ours - ref))
                line += f" BRISQUE ours {ours:8.4f} brisque-0.2.0 {ref:8.4f}"
            if ref_niqe is not None:
                ours, ref = niqe(x8), float(ref_niqe(np.round(rgb_to_y(x8)), mu, cov, window))
                worst["NIQE"] = max(worst["NIQE"], abs(ours - ref))
                line += f" | NIQE ours {ours:7.4f} basicsr-1.4.2 {ref:7.4f}"
            print(line, flush=True)
    print("largest |difference|: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
