"""Colour: the source's encoding <-> the model's display-referred [0, 1] RGB space.

Both restorers see display-referred values (what a film scan looks like on a monitor), because that is what
SD1.5's VAE and the detector's thresholds were made for. The conversion must round-trip exactly (to float
precision) for in-range values; values the model cannot hold (above 1, below 0 after conversion) are flagged
by ``representable`` and the pipeline takes them from the original instead.

Built in (no OCIO needed): ``srgb`` (already display-referred: identity), ``linear`` (scene-linear Rec.709
primaries -> sRGB encoding), ``cineon`` (Kodak Cineon log, 95/685 black/white code points, 0.002 density per code
value, 0.6 negative gamma -> linear -> sRGB encoding), ``rec709`` (BT.709 video encoding: display-referred as is),
``raw`` (no conversion). Any other name is a colour space of ``ocio_config`` (OpenImageIO's built-in
``ocio://`` configs work offline), converted to that config's sRGB-encoded Rec.709 space.

``auto`` (the default) decides per file, as Nuke's Read does: a colour space the file declares
(OpenImageIO's ``oiio:ColorSpace``, a DPX header's transfer characteristic) wins; otherwise a DPX/Cineon
scan is ``cineon``, floating-point data (EXR, float TIFF) is scene-``linear`` and integer data (8/16-bit PNG,
JPEG, TIFF, movies) is ``srgb``. ``resolve_colorspace`` says which.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from frdm.engine.errors import ParamError
from frdm.engine.halves import every_half
from frdm.engine.params import BUILTIN_COLORSPACES

IDENTITY = ("srgb", "rec709", "raw")
AUTO = "auto"

# Names files declare (OpenImageIO's canonical ones and common aliases) -> the built-in space they are.
_DECLARED = {
    "srgb": "srgb",
    "srgb_rec709_scene": "srgb",
    "srgb_rec709_display": "srgb",
    "srgb_tx": "srgb",
    "srgb - texture": "srgb",
    "linear": "linear",
    "scene_linear": "linear",
    "lin_srgb": "linear",
    "lin_rec709": "linear",
    "lin_rec709_scene": "linear",
    "linear rec.709 (srgb)": "linear",
    "cineon": "cineon",
    "kodaklog": "cineon",
    "log": "cineon",
    "rec709": "rec709",
    "bt709": "rec709",
}
# DPX transfer characteristic (header field, OpenImageIO's dpx:Transfer) -> built-in space.
_DPX_TRANSFER = {"linear": "linear", "logarithmic": "cineon", "printing density": "cineon", "itu-r 709-4": "rec709"}
_SCANS = (".dpx", ".cin")

# Cineon (Kodak 95/685). code is the 10-bit code value / 1023.
_CIN_BLACK, _CIN_WHITE, _CIN_DENSITY, _CIN_GAMMA = 95.0, 685.0, 0.002, 0.6
_CIN_OFFSET = 10.0 ** ((_CIN_BLACK - _CIN_WHITE) * _CIN_DENSITY / _CIN_GAMMA)


def _srgb_encode(lin: np.ndarray) -> np.ndarray:
    # float64 inside: the round trip must be exact to float32 precision.
    x = lin.astype(np.float64)
    out = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(np.maximum(x, 0.0031308), 1 / 2.4) - 0.055)
    return out


def _srgb_decode(enc: np.ndarray) -> np.ndarray:
    x = enc.astype(np.float64)
    return np.where(x <= 0.04045, x / 12.92, np.power((np.maximum(x, 0.04045) + 0.055) / 1.055, 2.4))


def _cineon_to_linear(code: np.ndarray) -> np.ndarray:
    x = code.astype(np.float64) * 1023.0
    return (np.power(10.0, (x - _CIN_WHITE) * _CIN_DENSITY / _CIN_GAMMA) - _CIN_OFFSET) / (1.0 - _CIN_OFFSET)


def _linear_to_cineon(lin: np.ndarray) -> np.ndarray:
    x = lin.astype(np.float64) * (1.0 - _CIN_OFFSET) + _CIN_OFFSET
    x = np.maximum(x, 1e-12)  # log of non-positive values: the pipeline keeps those from the original anyway
    return (_CIN_WHITE + np.log10(x) * _CIN_GAMMA / _CIN_DENSITY) / 1023.0


# Signed variants so negative scene-linear values survive the round trip (their pixels come from the original).
def _signed(fn, x: np.ndarray) -> np.ndarray:
    return np.sign(x) * fn(np.abs(x))


_MODEL_SPACE_CANDIDATES = (
    "sRGB Encoded Rec.709 (sRGB)",
    "sRGB - Texture",
    "srgb_tx",
    "sRGB",
    "Output - sRGB",
)


@lru_cache(maxsize=8)
def _ocio(config: str):
    import OpenImageIO as oiio

    cfg = oiio.ColorConfig(config)
    if cfg.geterror():
        raise ParamError(f"OCIO config '{config}' could not be loaded: {cfg.geterror()}")
    names = list(cfg.getColorSpaceNames())
    target = next((n for n in _MODEL_SPACE_CANDIDATES if n in names), None)
    if target is None:
        raise ParamError(f"OCIO config '{config}' has no sRGB-encoded colour space to use as the model space")
    return cfg, names, target


def _ocio_convert(rgb: np.ndarray, src: str, dst: str, config: str) -> np.ndarray:
    import OpenImageIO as oiio

    flat = np.ascontiguousarray(rgb.reshape(-1, 1, 3), dtype=np.float32)
    buf = oiio.ImageBuf(flat)
    out = oiio.ImageBufAlgo.colorconvert(buf, src, dst, colorconfig=config)
    if out.has_error:
        raise ParamError(f"OCIO conversion {src} -> {dst} failed: {out.geterror()}")
    return out.get_pixels(oiio.FLOAT).reshape(rgb.shape)


def resolve_colorspace(colorspace: str, frame: Any, ocio_config: str = "ocio://default") -> str:
    """The colour space to convert ``frame`` (an ``engine.frames.Frame``) with: ``colorspace`` itself, or
    for ``auto`` what the file says or its type implies (module docstring)."""
    if colorspace != AUTO:
        return colorspace
    declared = (getattr(frame, "file_colorspace", "") or "").strip()
    if declared.lower() in _DECLARED:
        return _DECLARED[declared.lower()]
    if declared:
        try:
            if declared in _ocio(ocio_config)[1]:
                return declared
        except ParamError:
            pass  # a config that does not load is reported where it is used; the file type decides here
    path = getattr(frame, "path", None) or ""
    if path.lower().endswith(_SCANS):
        attrs = getattr(frame, "attributes", {}) or {}
        transfer = str(attrs.get("dpx:Transfer", ("", ""))[1]).lower()
        return _DPX_TRANSFER.get(transfer, "cineon")
    formats = list(getattr(frame, "formats", ()) or ())
    if formats and hasattr(frame, "rgb_indices"):
        formats = [formats[i] for i in frame.rgb_indices()]  # an integer ID channel says nothing of colour
    if formats and all(f in ("half", "float", "double") for f in formats):
        return "linear"
    return "srgb"


def check_colorspace(colorspace: str, ocio_config: str) -> None:
    """Raise ParamError with the valid names if ``colorspace`` is unknown."""
    if colorspace in BUILTIN_COLORSPACES:
        return
    _, names, _ = _ocio(ocio_config)
    if colorspace not in names:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ParamError(
            f"parameter 'colorspace': '{colorspace}' is neither built in ({', '.join(BUILTIN_COLORSPACES)}) "
            f"nor a colour space of {ocio_config} ({shown})"
        )


# The built-in conversions into model space that act on each channel alone, as the float64 formula computes them.
_CURVES_TO_MODEL = {
    "linear": lambda x: _signed(_srgb_encode, x).astype(np.float32),
    "cineon": lambda x: _signed(_srgb_encode, _cineon_to_linear(x)).astype(np.float32),
}
# Below this many values the formula is as cheap as the table and its exactness check.
_TABLE_MIN_VALUES = 4096
# np.take's bounds mode for half codes: every uint16 indexes the 65536-entry table, so no bound is ever hit;
# 'clip' because the default 'raise' writes through a buffer and copies it into ``out`` (a second pass: a 2K
# frame's look-up then costs ~1.5-2x).
_EVERY_CODE = "clip"
# Values ``model_view`` looks up at a time (a band of rows: its codes and its float32 output fit the cache).
_BAND_VALUES = 1 << 17


@lru_cache(maxsize=8)
def _half_table(colorspace: str, clipped: bool = False) -> np.ndarray:
    """A per-channel curve (or the identity) at every one of the 65536 half-float values, indexed by the half's
    bit pattern; ``clipped``: then clipped to [0, 1] (the restorer's view, ``model_view``)."""
    halves = every_half()
    # Inf patterns are looked up (Inf is a half exactly: the formula's own value); NaN never is (NaN != NaN).
    with np.errstate(all="ignore"):
        table = halves if colorspace in IDENTITY else _CURVES_TO_MODEL[colorspace](halves)
    if clipped:
        table = np.clip(table, 0.0, 1.0)
    table.flags.writeable = False
    return table


def _half_codes(values: np.ndarray) -> np.ndarray | None:
    """The half-float bit patterns of ``values`` when every one of them is a half exactly (NaN is not), else None."""
    head = values[: max(1, _TABLE_MIN_VALUES // max(1, values[0].size))]  # a view, whatever the strides
    if not np.array_equal(head.astype(np.float16), head):  # float or integer-coded data: known at once
        return None
    half = values.astype(np.float16)
    return half.view(np.uint16) if np.array_equal(half, values) else None


def to_model(
    rgb: np.ndarray, colorspace: str, ocio_config: str = "ocio://default", out: np.ndarray | None = None
) -> np.ndarray:
    """(..., 3) source-encoded values -> model space (display-referred; in range means within [0, 1]).
    ``rgb``: float32, or float16 (a frame's half samples, ``Frame.samples``). ``out``: a float32 array of
    ``rgb``'s shape to write into (returned)."""
    _resolved(colorspace)
    if colorspace in _CURVES_TO_MODEL:
        # Half-float data (EXR half: most renders and scans) has 65536 possible values: a look-up of the very
        # values the formula gives, bit for bit, at a fraction of the float64 formula's cost per pixel. Float32
        # data is looked up when every value is a half (checked); halves held as such are their own codes.
        if rgb.dtype == np.float16:
            return np.take(_half_table(colorspace), rgb.view(np.uint16), out=out, mode=_EVERY_CODE)
        codes = _half_codes(rgb) if rgb.size >= _TABLE_MIN_VALUES else None
        if codes is not None:
            return np.take(_half_table(colorspace), codes, out=out, mode=_EVERY_CODE)
        model = _CURVES_TO_MODEL[colorspace](rgb)
    elif colorspace in IDENTITY:
        model = rgb.astype(np.float32, copy=out is None)
    else:
        _, _, target = _ocio(ocio_config)
        check_colorspace(colorspace, ocio_config)
        model = _ocio_convert(rgb, colorspace, target, ocio_config)
    if out is None:
        return model
    np.copyto(out, model)
    return out


def model_view(
    rgb: np.ndarray, colorspace: str, ocio_config: str = "ocio://default", out: np.ndarray | None = None
) -> np.ndarray:
    """The restorer's view of (..., 3) source-encoded values: model space clipped to [0, 1] (``to_model``'s
    arguments). Half samples (float16, ``Frame.samples``) in a built-in space take one look-up of a table
    with the clip folded in: no float32 copy of the source, no pass over the result."""
    if rgb.dtype == np.float16 and (colorspace in IDENTITY or colorspace in _CURVES_TO_MODEL):
        table, codes = _half_table(colorspace, clipped=True), rgb.view(np.uint16)
        out = np.empty(rgb.shape, np.float32) if out is None else out
        # In bands of rows: a whole 2K frame's gather from a strided view misses the TLB on every few values
        # (4 KB pages: 60-75 ms against 20-25 ms in bands of ~1 MB; with huge pages ~30 against ~20).
        step = max(1, _BAND_VALUES // max(1, codes[:1].size))
        # np.take casts its indices to intp first, and from a strided view (the R, G, B of RGBA) that cast is
        # most of the look-up's time: each band's codes are gathered channel by channel (long strided runs)
        # into a contiguous buffer first. 2K RGBA half: ~16 ms a frame against 26-48.
        band = None if codes.flags.c_contiguous else np.empty(codes[:step].shape, np.uint16)
        # The identity's table is the halves' own float32 values clipped: OpenCV's conversion of halves (F16C
        # vector instructions, exact) and a clip of the band compute the same bits at a third of the
        # look-up's cost (numpy's own half conversion is slower than either). Every half pattern is tested.
        convert = colorspace in IDENTITY and out.flags.c_contiguous
        if convert:
            import cv2  # the engine's; deferred like the blend's
        for i in range(0, codes.shape[0], step):
            src = codes[i : i + step]
            if band is not None:
                held = band[: src.shape[0]]
                for c in range(src.shape[-1]):
                    held[..., c] = src[..., c]
                src = held
            dst = out[i : i + step]
            if convert:
                n = src.shape[0]
                cv2.multiply(src.view(np.float16).reshape(n, -1), 1.0, dst=dst.reshape(n, -1), dtype=cv2.CV_32F)
                np.clip(dst, 0.0, 1.0, out=dst)
                # F16C quiets a signalling NaN (another bit pattern than numpy's): a band holding a NaN (its max
                # is NaN) is looked up instead.
                if not np.isnan(dst.max(initial=0.0)):
                    continue
            np.take(table, src, out=dst, mode=_EVERY_CODE)
        return out
    if colorspace in IDENTITY:
        return np.clip(rgb, 0.0, 1.0, out=out)
    return np.clip(to_model(rgb, colorspace, ocio_config, out=out), 0.0, 1.0, out=out)


def from_model(rgb: np.ndarray, colorspace: str, ocio_config: str = "ocio://default") -> np.ndarray:
    """Inverse of ``to_model``."""
    _resolved(colorspace)
    if colorspace in IDENTITY:
        return rgb.astype(np.float32, copy=True)
    if colorspace == "linear":
        return _signed(_srgb_decode, rgb).astype(np.float32)
    if colorspace == "cineon":
        return _linear_to_cineon(_signed(_srgb_decode, rgb)).astype(np.float32)
    _, _, target = _ocio(ocio_config)
    check_colorspace(colorspace, ocio_config)
    return _ocio_convert(rgb, target, colorspace, ocio_config)


def _resolved(colorspace: str) -> None:
    if colorspace == AUTO:  # a programming error: 'auto' names no conversion until a frame decides it
        raise ValueError("colour space 'auto' must be resolved per frame first (resolve_colorspace)")


def representable(model_rgb: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(..., 3) -> (...) bool: every channel inside [0, 1], so the model can hold the pixel."""
    return np.all((model_rgb >= -tol) & (model_rgb <= 1.0 + tol), axis=-1)
