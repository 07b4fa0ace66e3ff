"""Where the metric parameter files are: ``params/`` inside the installed package, or ``FRDM_METRIC_PARAMS``."""

from __future__ import annotations

import os

from frdm.engine.errors import InputError

PARAMS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "params")


def param_path(name: str) -> str:
    """Full path of one parameter file; a clear error if it is missing (a broken install or a wrong
    FRDM_METRIC_PARAMS)."""
    folder = os.environ.get("FRDM_METRIC_PARAMS") or PARAMS_DIR
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        where = "FRDM_METRIC_PARAMS" if os.environ.get("FRDM_METRIC_PARAMS") else "the installed package"
        raise InputError(
            f"{path}: metric parameter file missing (looked in {where}); reinstall frdm, or point "
            "FRDM_METRIC_PARAMS at a folder holding lpips_alex.safetensors, niqe_pris_params.npz, "
            "brisque_svm.txt and brisque_normalize.json"
        )
    return path
