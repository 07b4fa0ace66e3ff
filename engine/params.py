"""The one declaration of FRDM's parameters.

It drives the Nuke knobs, the CLI flags, presets, wire validation and the cache key (nuke-ML-server style:
declare an option once). Pure Python: the host side imports it without numpy or torch.

Every parameter has a *stage*: the earliest step of the pipeline whose result it changes.

    detect -> fill -> blend -> output

A cache keyed at the ``fill`` stage survives a change of ``feather`` (a ``blend`` parameter): changing one knob
re-runs only what it affects. Which parameters a frame depends on, and its key, are said in
``frdm.engine.depends``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from frdm.engine.errors import ParamError

STAGES = ("detect", "fill", "blend", "output", "run")
PRESET_FORMAT = 1

# Colour spaces the engine knows without OCIO. Any other name is looked up in ``ocio_config``.
BUILTIN_COLORSPACES = ("auto", "srgb", "linear", "cineon", "rec709", "raw")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "int" | "float" | "bool" | "choice" | "str"
    default: Any
    help: str
    group: str = "general"
    stage: str = "detect"
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    engines: tuple[str, ...] = ("classical", "diffusion")
    label: str = ""
    #: On the command line a value that is none of ``choices`` is a file path meaning this choice
    #: (``--mask shot_roto.####.exr`` is ``mask='artist'`` with that sequence); ``cli_paths`` returns it.
    path_choice: str = ""
    metavar: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def knob_label(self) -> str:
        return self.label or self.name.replace("_", " ")

    def coerce(self, value: Any) -> Any:
        """Return ``value`` as this parameter's type, or raise ParamError naming the field."""
        where = f"parameter '{self.name}'"
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.lower() in (
                "1",
                "true",
                "yes",
                "on",
                "0",
                "false",
                "no",
                "off",
            ):
                return value.lower() in ("1", "true", "yes", "on")
            raise ParamError(f"{where} must be true or false, got {value!r}")
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ParamError(f"{where} must be an integer, got {value!r}")
            if isinstance(value, int):
                out: Any = value  # exact, however large: the range check below bounds it
            else:
                try:
                    number = float(value)
                except ValueError:
                    raise ParamError(f"{where} must be an integer, got {value!r}") from None
                # inf, nan and '1e999' (inf once parsed) are no integers: int() of them would overflow
                if not math.isfinite(number):
                    raise ParamError(f"{where} must be a finite integer, got {value!r}")
                if number != int(number):
                    raise ParamError(f"{where} must be an integer, got {value!r}")
                out = int(number)
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ParamError(f"{where} must be a number, got {value!r}")
            try:
                out = float(value)
            except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
                raise ParamError(f"{where} must be a finite number, got {value!r}") from None
            if not math.isfinite(out):
                raise ParamError(f"{where} must be a finite number, got {value!r}")
        elif self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise ParamError(f"{where} must be one of {', '.join(self.choices)}; got {value!r}")
            return value
        elif self.kind == "str":
            if not isinstance(value, str):
                raise ParamError(f"{where} must be text, got {value!r}")
            if len(value) > 4096:
                raise ParamError(f"{where} is longer than 4096 characters")
            return value
        else:  # pragma: no cover - a schema bug, not a user error
            raise AssertionError(f"unknown kind {self.kind}")
        if self.minimum is not None and out < self.minimum:
            raise ParamError(f"{where} must be >= {self.minimum}, got {out}")
        if self.maximum is not None and out > self.maximum:
            raise ParamError(f"{where} must be <= {self.maximum}, got {out}")
        return out


class Params(dict):
    """Validated parameters: every name of the schema, every value checked (what ``Schema.validate``
    returns). Read-only, so holding one means it is still valid: ``validate`` hands it back as it is and
    parameters are checked once where they enter (CLI, wire, knobs), not again by every function they pass.
    ``SCHEMA.update(params, changes)`` makes a changed copy, checking only the changes."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("validated parameters are read-only; use SCHEMA.update(params, {name: value})")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (Params, (dict(self),))


@dataclass(frozen=True)
class Schema:
    params: tuple[Param, ...]
    by_name: dict[str, Param] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {p.name: p for p in self.params})

    def __iter__(self):
        return iter(self.params)

    def __getitem__(self, name: str) -> Param:
        return self.by_name[name]

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, values: Mapping[str, Any] | None = None, *, partial: bool = False) -> dict[str, Any]:
        """Defaults overlaid with ``values``, every value checked: a ``Params`` (``partial``: only the given
        names, as a plain dict). Unknown names are errors (typos are common in presets and farm scripts);
        the message suggests the closest known name. ``Params`` are returned as they are (already checked)."""
        if isinstance(values, Params) and not partial:
            return values
        if values is not None and not isinstance(values, Mapping):
            raise ParamError("parameters must be a mapping of name to value")
        out: dict[str, Any] = {} if partial else self.defaults()
        out.update(self._coerce(values or {}))
        if partial:
            return out
        _check_cross_field(out)
        return Params(out)

    def update(self, params: Mapping[str, Any], changes: Mapping[str, Any]) -> Params:
        """``params`` (validated) with ``changes``; only the changes are checked (and the cross-field rules)."""
        out = dict(self.validate(params))
        out.update(self._coerce(changes))
        _check_cross_field(out)
        return Params(out)

    def _coerce(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for name, value in values.items():
            if not isinstance(name, str) or name not in self.by_name:
                close = difflib.get_close_matches(str(name), list(self.by_name), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ParamError(f"unknown parameter '{name}'{hint}")
            out[name] = self.by_name[name].coerce(value)
        return out

    def for_engine(self, engine: str) -> list[Param]:
        return [p for p in self.params if engine in p.engines]


def _check_cross_field(v: Mapping[str, Any]) -> None:
    if v["patch_overlap"] * 2 > v["patch_size"]:
        raise ParamError(
            f"parameter 'patch_overlap' ({v['patch_overlap']}) must be at most half of 'patch_size' ({v['patch_size']})"
        )
    if v["patch_size"] % 64:
        raise ParamError(f"parameter 'patch_size' must be a multiple of 64 (the latent grid x8), got {v['patch_size']}")
    if v["window_overlap"] >= v["window"]:
        raise ParamError(
            f"parameter 'window_overlap' ({v['window_overlap']}) must be smaller than 'window' ({v['window']})"
        )


_CLASSICAL = ("classical",)
_DIFFUSION = ("diffusion",)

SCHEMA = Schema(
    (
        # --- general -------------------------------------------------------------------------------
        Param(
            "engine",
            "choice",
            "classical",
            "restorer: 'classical' needs no weights; 'diffusion' is HaineiFRDM and needs --weights",
            choices=("classical", "diffusion"),
        ),
        Param(
            "colorspace",
            "str",
            "auto",
            "colour space of the source pixels: auto (by file: what it declares, else EXR/float data "
            "scene-linear, DPX/Cineon log, 8/16-bit PNG/JPEG/TIFF sRGB), srgb, linear (scene-linear, Rec.709 "
            "primaries), cineon (Kodak 95/685 log), rec709, raw (no conversion), or any colour space name of "
            "the OCIO config",
        ),
        Param(
            "ocio_config",
            "str",
            "ocio://studio-config-latest",
            "OCIO config used when 'colorspace' is "
            "not built in (a path or an OCIO built-in URI such as ocio://default)",
        ),
        Param(
            "mask",
            "choice",
            "auto",
            "which pixels may change: 'auto' = only the detected defects "
            "(restore defects only), 'none' = the whole frame, 'artist' = an artist mask (a separate "
            "sequence or 'mask_channel'), used as given: nothing outside it changes; on the command line a "
            "mask sequence (e.g. roto.####.exr) means 'artist' with that mask",
            choices=("auto", "none", "artist"),
            stage="blend",
            path_choice="artist",
            metavar="SEQ|auto|none|artist",
        ),
        Param(
            "mask_channel",
            "str",
            "",
            "channel of the source holding the artist mask (e.g. 'mask' or "
            "'A'); empty = the mask comes from a separate sequence",
            stage="blend",
        ),
        Param(
            "feather",
            "float",
            0.5,
            "soft edge of the auto defect matte in pixels (Gaussian sigma, outwards); an artist mask is used "
            "as given (its softness is the artist's)",
            stage="blend",
            minimum=0.0,
            maximum=200.0,
        ),
        Param(
            "matte_grow",
            "int",
            2,
            "grow the auto defect matte by this many pixels before feathering, so defect halos are covered "
            "(an artist mask is never grown)",
            stage="blend",
            minimum=0,
            maximum=64,
        ),
        # --- classical detector ----------------------------------------------------------------------
        Param(
            "temporal_radius",
            "int",
            2,
            "frames on each side used for detection and temporal fill",
            group="detect",
            minimum=1,
            maximum=4,
            engines=_CLASSICAL,
        ),
        Param(
            "dust_threshold",
            "float",
            0.06,
            "spike-detector threshold: how much a pixel must differ "
            "from all motion-compensated neighbours (display-referred 0-1 units)",
            group="detect",
            minimum=0.005,
            maximum=1.0,
            engines=_CLASSICAL,
        ),
        Param(
            "dust_max_area",
            "int",
            6000,
            "largest blob in pixels treated as dust/dirt (larger changes are taken as real motion)",
            group="detect",
            minimum=1,
            maximum=10_000_000,
            engines=_CLASSICAL,
        ),
        Param(
            "scratches",
            "bool",
            True,
            "detect and remove persistent vertical line scratches",
            group="detect",
            engines=_CLASSICAL,
        ),
        Param(
            "scratch_threshold",
            "float",
            0.03,
            "minimum contrast of a line scratch against its horizontal neighbourhood (0-1 units)",
            group="detect",
            minimum=0.002,
            maximum=1.0,
            engines=_CLASSICAL,
        ),
        Param(
            "scratch_min_length",
            "float",
            0.5,
            "minimum scratch length as a fraction of frame height",
            group="detect",
            minimum=0.05,
            maximum=1.0,
            engines=_CLASSICAL,
        ),
        Param(
            "flow_reliability",
            "float",
            1.0,
            "forward-backward optical-flow error (pixels) above which "
            "motion is unreliable and spatial inpainting is used instead of temporal fill",
            group="detect",
            minimum=0.05,
            maximum=50.0,
            engines=_CLASSICAL,
        ),
        Param(
            "deflicker",
            "float",
            0.0,
            "temporal brightness stabilisation: 0 = off (detection is flicker-robust without it and only "
            "defects change), 1 = each frame's local brightness moved all the way to the mean of its "
            "motion-compensated neighbours' within temporal_radius; any value above 0 changes every pixel",
            group="detect",
            stage="fill",
            minimum=0.0,
            maximum=1.0,
            engines=_CLASSICAL,
        ),
        # --- diffusion (HaineiFRDM) ------------------------------------------------------------------
        Param(
            "steps",
            "int",
            20,
            "denoising steps",
            group="diffusion",
            stage="fill",
            minimum=1,
            maximum=1000,
            engines=_DIFFUSION,
        ),
        Param(
            "strength",
            "float",
            1.0,
            "how far the degraded latent is noised before denoising (1 = from z_T, the paper's setting)",
            group="diffusion",
            stage="fill",
            minimum=0.01,
            maximum=1.0,
            engines=_DIFFUSION,
        ),
        Param(
            "seed",
            "int",
            0,
            "noise seed; each frame's noise derives from (seed, frame number) so a "
            "chunked render equals a whole-range render",
            group="diffusion",
            stage="fill",
            minimum=0,
            maximum=2**31 - 1,
            engines=_DIFFUSION,
        ),
        Param(
            "prompt",
            "str",
            "an old film frame",
            "full-frame description (global prompt)",
            group="diffusion",
            stage="fill",
            engines=_DIFFUSION,
        ),
        Param(
            "patch_size",
            "int",
            512,
            "stage-2 patch size in pixels (multiple of 64)",
            group="diffusion",
            stage="fill",
            minimum=64,
            maximum=4096,
            engines=_DIFFUSION,
        ),
        Param(
            "patch_overlap",
            "int",
            128,
            "overlap of neighbouring patches in pixels",
            group="diffusion",
            stage="fill",
            minimum=0,
            maximum=2048,
            engines=_DIFFUSION,
        ),
        Param(
            "window",
            "int",
            16,
            "frames per temporal window",
            group="diffusion",
            stage="fill",
            minimum=1,
            maximum=64,
            engines=_DIFFUSION,
        ),
        Param(
            "window_overlap",
            "int",
            4,
            "frames shared by consecutive temporal windows",
            group="diffusion",
            stage="fill",
            minimum=0,
            maximum=63,
            engines=_DIFFUSION,
        ),
        Param(
            "sampler",
            "choice",
            "ddim",
            "denoising sampler: 'ddim' (the paper's) or 'dpmsolver' (DPM-Solver++ 2M; each patch keeps its own "
            "solver history)",
            group="diffusion",
            stage="fill",
            choices=("ddim", "dpmsolver"),
            engines=_DIFFUSION,
        ),
        Param(
            "patch_blend",
            "choice",
            "cosine",
            "how overlapping stage-2 patches are assembled: 'cosine' blend weights, or 'uniform' averaging "
            "(shows seams; for comparison)",
            group="diffusion",
            stage="fill",
            choices=("cosine", "uniform"),
            engines=_DIFFUSION,
        ),
        Param(
            "global_residual",
            "bool",
            True,
            "stage 1 global residual (Eq. 1-2) against blocking",
            group="diffusion",
            stage="fill",
            engines=_DIFFUSION,
        ),
        Param(
            "kv_cache",
            "bool",
            True,
            "patches attend to cached keys/values of denoised neighbours",
            group="diffusion",
            stage="fill",
            engines=_DIFFUSION,
        ),
        Param(
            "precision",
            "choice",
            "fp16",
            "network precision on the GPU (CPU runs fp32)",
            group="diffusion",
            stage="fill",
            choices=("fp16", "bf16", "fp32"),
            engines=_DIFFUSION,
        ),
        Param(
            "vram_budget_gb",
            "float",
            0.0,
            "GPU memory the planner may use (0 = 90% of the card; set it on mixed farms so every chunk plans alike)",
            group="diffusion",
            minimum=0.0,
            maximum=1024.0,
            engines=_DIFFUSION,
            stage="run",
        ),
        # --- output ----------------------------------------------------------------------------------
        Param(
            "compression",
            "choice",
            "same",
            "EXR compression of written frames ('same' = as the input)",
            group="output",
            stage="output",
            choices=("same", "none", "zip", "zips", "piz", "rle", "pxr24", "dwaa", "dwab", "b44"),
        ),
        Param(
            "pixel_type",
            "choice",
            "same",
            "EXR pixel type of written frames ('same' = as the input)",
            group="output",
            stage="output",
            choices=("same", "half", "float"),
        ),
        Param(
            "write_matte",
            "bool",
            True,
            "add the defect matte as an extra channel 'frdm.matte'",
            group="output",
            stage="output",
        ),
    )
)


def defaults() -> dict[str, Any]:
    return SCHEMA.defaults()


def validate(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return SCHEMA.validate(values)


# --- presets -------------------------------------------------------------------------------------------


def load_preset(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A per-shot preset: JSON ``{"frdm_preset": 1, "params": {...}}``. Returns the (partial) values."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise ParamError(f"preset file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParamError(f"preset file {path} is not readable JSON: {exc}") from None
    if not isinstance(doc, dict) or "params" not in doc or not isinstance(doc["params"], dict):
        raise ParamError(
            f"preset file {path} has no 'params' object (expected {{'frdm_preset': 1, 'params': {{...}}}})"
        )
    if doc.get("frdm_preset", PRESET_FORMAT) > PRESET_FORMAT:
        raise ParamError(f"preset file {path} is format {doc['frdm_preset']}; this FRDM reads up to {PRESET_FORMAT}")
    try:
        return SCHEMA.validate(doc["params"], partial=True)
    except ParamError as exc:
        raise ParamError(f"preset file {path}: {exc}") from None


def save_preset(path: str | os.PathLike[str], values: Mapping[str, Any], *, only_changed: bool = True) -> None:
    """Write a preset atomically. By default only values that differ from the defaults are kept, so a
    preset stays readable and later default improvements still reach the shot."""
    full = SCHEMA.validate(values)
    base = SCHEMA.defaults()
    kept = {k: v for k, v in full.items() if not only_changed or v != base[k]}
    text = json.dumps({"frdm_preset": PRESET_FORMAT, "params": kept}, indent=2, sort_keys=True) + "\n"
    from frdm.engine.atomic import write_text

    try:
        write_text(path, text)
    except OSError as exc:
        raise ParamError(f"preset file {path}: cannot write it ({exc.strerror or exc})") from None


# --- command line --------------------------------------------------------------------------------------


def add_cli_arguments(parser: Any, groups: Iterable[str] | None = None) -> None:
    """Add one ``--flag`` per parameter (default None so that presets can fill what the user left out). A
    parameter with a ``path_choice`` also takes a file path (``--mask SEQ``; see ``cli_paths``)."""
    wanted = set(groups) if groups is not None else None
    for group in dict.fromkeys(p.group for p in SCHEMA):
        if wanted is not None and group not in wanted:
            continue
        g = parser.add_argument_group(f"{group} parameters")
        for p in SCHEMA:
            if p.group != group:
                continue
            # argparse %-formats help text: a literal '%' (e.g. "90% of the card") must be doubled
            kw: dict[str, Any] = {
                "dest": f"param_{p.name}",
                "default": None,
                "help": f"{p.help} (default: {p.default!r})".replace("%", "%%"),
            }
            if p.kind == "bool":
                g.add_argument(p.flag, action="store_true", **kw)
                kw2 = dict(kw, help=f"turn '{p.name}' off")
                g.add_argument("--no-" + p.name.replace("_", "-"), action="store_false", **kw2)
                continue
            kw["metavar"] = p.metavar or p.name.upper()
            if p.kind == "choice" and not p.path_choice:
                kw["choices"] = p.choices
                kw["metavar"] = "{" + ",".join(p.choices) + "}"
            g.add_argument(p.flag, **kw)


def cli_paths(args: Any) -> dict[str, str]:
    """The file paths given for parameters with a ``path_choice`` (``{'mask': 'roto.####.exr'}``)."""
    out = {}
    for p in SCHEMA:
        v = getattr(args, f"param_{p.name}", None)
        if p.path_choice and v is not None and v not in p.choices:
            out[p.name] = str(v)
    return out


def from_cli_args(args: Any, preset: Mapping[str, Any] | None = None) -> Params:
    """Defaults < preset < explicit flags, validated (a path for a ``path_choice`` parameter means that
    choice: ``--mask roto.####.exr`` is ``mask='artist'``)."""
    values: dict[str, Any] = dict(preset or {})
    paths = cli_paths(args)
    for p in SCHEMA:
        v = getattr(args, f"param_{p.name}", None)
        if v is not None:
            values[p.name] = p.path_choice if p.name in paths else v
    return SCHEMA.validate(values)
